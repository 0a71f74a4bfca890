"""Create a demo lab, a lab member and an admin, register the demo model, make the Validation
experiment (seed_validation: finished predictions of every pipeline) and print how to log in.

Used by `make run` on a fresh machine. Passwords come from the environment when set
(DEMO_PASSWORD), otherwise a random one is made and printed once.
"""

import os
import secrets
import time

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from experiments.models import Lab
from predictions.catalogue import register_demo_model


class Command(BaseCommand):
    help = ("Create the demo lab with an admin and a lab member, and its Validation experiment "
            "(does nothing for what exists).")

    def add_arguments(self, parser):
        parser.add_argument("--no-validation", action="store_true",
                            help="Leave out the Validation experiment (users and demo model only).")

    def handle(self, *args, **options):
        started = time.monotonic()
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
        if not options["no_validation"]:
            call_command("seed_validation", stdout=self.stdout, stderr=self.stderr)
        self.stdout.write(f"Demo seed done in {time.monotonic() - started:.0f} s.")
        if not created:
            self.stdout.write("Demo lab and users already exist (reset a password with "
                              "`python manage.py changepassword admin`).")
            return
        self.stdout.write(self.style.SUCCESS("Demo lab created. Log in at http://127.0.0.1:8000/ with:"))
        for username, password, role in created:
            self.stdout.write(f"  {role:11s} user: {username:12s} password: {password}")
