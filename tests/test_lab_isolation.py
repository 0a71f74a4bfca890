"""A member of another lab sees none of lab A's experiments or slides: 404, not 403."""

import pytest
from django.urls import reverse

from experiments.models import Experiment
from tests.conftest import PASSWORD
from tests.factories import ExperimentFactory


def test_experiment_list_shows_only_the_users_labs(alice_client, bob_client, experiment, lab_b, bob):
    ExperimentFactory(name="Bob's kidney study", lab=lab_b, created_by=bob)
    alice_page = alice_client.get(reverse("experiments:list")).content.decode()
    bob_page = bob_client.get(reverse("experiments:list")).content.decode()
    assert "Liver fibrosis" in alice_page and "Bob&#x27;s kidney study" not in alice_page
    assert "Liver fibrosis" not in bob_page and "Bob&#x27;s kidney study" in bob_page


@pytest.mark.parametrize("name, method", [
    ("experiments:detail", "get"), ("experiments:slides", "get"), ("experiments:upload", "post"),
    ("experiments:import", "get"), ("experiments:import", "post"),
])
def test_another_labs_experiment_pages_are_404(bob_client, experiment, name, method):
    response = getattr(bob_client, method)(reverse(name, args=[experiment.pk]))
    assert response.status_code == 404


def test_another_labs_thumbnail_is_404(bob_client, alice_client, slide, settings, tmp_path):
    assert bob_client.get(reverse("experiments:thumbnail", args=[slide.pk])).status_code == 404


def test_cannot_create_an_experiment_in_another_lab(bob_client, lab_a):
    response = bob_client.post(reverse("experiments:create"), {"lab": lab_a.pk, "name": "intrusion"})
    assert response.status_code == 200  # the form is shown again with an error
    assert "Select a valid choice" in response.content.decode()
    assert not Experiment.objects.filter(name="intrusion").exists()


@pytest.mark.parametrize("url", ["/experiments/", "/experiments/new/", "/experiments/1/", "/experiments/slides/1/thumbnail.png"])
def test_login_is_required(client, db, url):
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_login_page_and_logout(client, alice):
    assert client.get("/accounts/login/").status_code == 200
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/experiments/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/experiments/").status_code == 302


def test_create_experiment_then_see_it(alice_client, lab_a):
    response = alice_client.post(reverse("experiments:create"), {"lab": lab_a.pk, "name": "Kidney", "description": "IHC panel"}, follow=True)
    assert response.status_code == 200
    assert "Experiment “Kidney” created" in response.content.decode()
    duplicate = alice_client.post(reverse("experiments:create"), {"lab": lab_a.pk, "name": "Kidney"})
    assert "already has an experiment called" in duplicate.content.decode()
