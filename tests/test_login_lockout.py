"""Login attempts are throttled: after AXES_FAILURE_LIMIT failures in a row for one user name from
one address, even the right password is refused with a page that says why; admins see the
lockout in the admin and lift it there."""

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from tests.conftest import PASSWORD

LOGIN = "/accounts/login/"


def try_login(client, username, password):
    return client.post(LOGIN, {"username": username, "password": password})


@pytest.mark.django_db
def test_repeated_failures_lock_the_login_until_an_admin_lifts_it(client, alice):
    from axes.models import AccessAttempt

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert try_login(client, "alice", "wrong").status_code == 200   # the form again, with its error
    locked = try_login(client, "alice", "wrong")
    assert locked.status_code == 429 and "Login locked" in locked.content.decode()
    # Now the right password is refused too, and nobody is logged in.
    refused = try_login(client, "alice", PASSWORD)
    assert refused.status_code == 429 and "ask an admin" in refused.content.decode()
    assert client.get("/predictions/dashboard/").status_code == 302

    # The admin sees the lockout, and lifts it by deleting the attempt.
    admin = get_user_model().objects.create_superuser("boss", password=PASSWORD)
    from django.test import Client

    staff = Client()
    staff.force_login(admin)
    listing = staff.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200 and "alice" in listing.content.decode()
    attempt = AccessAttempt.objects.get(username="alice")
    assert staff.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"}).status_code == 302
    assert try_login(client, "alice", PASSWORD).status_code == 302
    assert client.get("/predictions/dashboard/").status_code == 200


@pytest.mark.django_db
def test_a_success_resets_the_count(client, alice):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        try_login(client, "alice", "wrong")
    assert try_login(client, "alice", PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert try_login(client, "alice", "wrong").status_code == 200
    assert try_login(client, "alice", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_another_user_is_not_locked_by_someone_elses_failures(client, alice, bob):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        try_login(client, "alice", "wrong")
    assert try_login(client, "bob", PASSWORD).status_code == 302
