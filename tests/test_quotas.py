"""Caps on predictions queued or running at once, per user and per lab: a submit past one is
refused with what to do (the API: 429), through the page, the API and re-run alike, and nothing is
queued; once work ends, submitting works again."""

import pytest
from django.urls import reverse

from experiments.models import Slide
from predictions.models import Prediction, Status
from tests.conftest import token_client
from tests.factories import MemberFactory

API = "/api/v1"


@pytest.fixture
def ready(experiment):
    return Slide.objects.create(experiment=experiment, original_name="cmu.svs", status=Slide.Status.READY,
                                sha256="ab" * 32)


def submit(client, experiment):
    return client.post(f"{API}/predictions/", {"experiment": experiment.pk, "pipeline": "tissue-area"}, format="json")


@pytest.mark.django_db
def test_a_user_at_the_cap_is_refused_with_a_429_until_work_ends(settings, pipeline_rows, alice, experiment, ready):
    settings.HISTOIA_MAX_ACTIVE_PER_USER = 2
    client = token_client(alice)
    accepted = [submit(client, experiment) for _ in range(2)]
    assert [r.status_code for r in accepted] == [202, 202]
    refused = submit(client, experiment)
    assert refused.status_code == 429
    assert "You already have 2 predictions queued or running" in refused.json()["non_field_errors"][0]
    assert Prediction.objects.count() == 2
    # Re-run counts too.
    rerun = client.post(f"{API}/predictions/{accepted[0].json()['id']}/rerun/")
    assert rerun.status_code == 429
    # Another member of the lab is not held back by alice's cap.
    assert submit(token_client(MemberFactory(lab=experiment.lab)), experiment).status_code == 202
    # Once one of alice's ends, she can submit again.
    Prediction.objects.filter(pk=accepted[0].json()["id"]).update(status=Status.SUCCEEDED)
    assert submit(client, experiment).status_code == 202


@pytest.mark.django_db
def test_a_lab_at_its_cap_is_refused_and_the_page_says_what_to_do(settings, pipeline_rows, alice, alice_client,
                                                                  experiment, ready):
    settings.HISTOIA_MAX_ACTIVE_PER_LAB = 1
    assert submit(token_client(alice), experiment).status_code == 202
    page = alice_client.post(reverse("predictions:new", args=[experiment.pk]),
                             {"pipeline": pipeline_rows["tissue-area"].pk, "slides": [ready.pk], "submit": "1",
                              "priority": "normal"})
    assert page.status_code == 200
    assert "Your lab already has 1 predictions queued or running" in page.content.decode()
    assert Prediction.objects.count() == 1
