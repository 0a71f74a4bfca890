"""Create a demo lab, a lab member and an admin, register the demo model, and print how to log in.

Used by `make run` on a fresh machine. Passwords come from the environment when set
(DEMO_PASSWORD), otherwise a random one is made and printed once.
"""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from experiments.models import Lab
from predictions.catalogue import register_demo_model


class Command(BaseCommand):
    help = "Create the demo lab with an admin and a lab member (does nothing if they exist)."

    def handle(self, *args, **options):
        User = get_user_model()
        lab, _ = Lab.objects.get_or_create(name="Demo lab")
        register_demo_model()
        created = []
        for username, is_admin in (("admin", True), ("histologist", False)):
            if User.objects.filter(username=username).exists():
                continue
            password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(9)
            user = User.objects.create_user(username, password=password,
                                            is_staff=is_admin, is_superuser=is_admin)
            lab.members.add(user)
            created.append((username, password, "admin" if is_admin else "lab member"))
        if not created:
            self.stdout.write("Demo lab and users already exist (reset a password with "
                              "`python manage.py changepassword admin`).")
            return
        self.stdout.write(self.style.SUCCESS("Demo lab created. Log in at http://127.0.0.1:8000/ with:"))
        for username, password, role in created:
            self.stdout.write(f"  {role:11s} user: {username:12s} password: {password}")
