"""Lab members and lab managers: urgent priority and deleting are the managers' (and staff's).

Deleting a slide removes its file, thumbnail and cached tiles; a slide that results were computed
from stays as a "deleted" row so those results keep their provenance. Deleting an experiment
removes its slides, files, predictions and results. Neither happens while work on them is queued
or running.
"""

from pathlib import Path

import pytest
from django.urls import reverse

from experiments.models import Experiment, Slide
from predictions.models import Prediction, SlideRun, Status
from tests.conftest import token_client
from tests.factories import MemberFactory, PredictionFactory, SlideFactory, SlideRunFactory

API = "/api/v1"
pytestmark = pytest.mark.django_db


@pytest.fixture
def carol(lab_a):
    """A manager of lab A."""
    manager = MemberFactory(username="carol", lab=lab_a)
    lab_a.managers.add(manager)
    return manager


@pytest.fixture
def ready(experiment):
    return SlideFactory(experiment=experiment, original_name="case-07.svs")


def submit(user, experiment, priority):
    return token_client(user).post(f"{API}/predictions/", {"experiment": experiment.pk, "pipeline": "tissue-area",
                                                          "priority": priority}, format="json")


# -- urgent ---------------------------------------------------------------------------------------
def test_only_managers_and_staff_mark_work_urgent(pipeline_rows, alice, carol, experiment, ready):
    refused = submit(alice, experiment, "urgent")
    assert refused.status_code == 400
    assert "Urgent priority is for the lab's managers and staff" in refused.json()["priority"][0]
    assert not Prediction.objects.exists()

    assert submit(alice, experiment, "normal").status_code == 202
    assert submit(carol, experiment, "urgent").status_code == 202
    staff = MemberFactory(username="admin-on-duty", is_staff=True)   # staff, not in the lab at all...
    experiment.lab.members.add(staff)                                 # ...until added to reach its data
    assert submit(staff, experiment, "urgent").status_code == 202
    assert list(Prediction.objects.order_by("pk").values_list("priority", flat=True)) == ["normal", "urgent", "urgent"]


def test_the_run_page_offers_urgent_to_managers_only(pipeline_rows, client, alice, carol, experiment, ready):
    url = reverse("predictions:new", args=[experiment.pk])
    client.force_login(alice)
    page = client.get(url).content.decode()
    assert 'value="urgent"' not in page and "Urgent priority is for the lab&#x27;s managers and staff" in page
    forged = client.post(url, {"pipeline": pipeline_rows["tissue-area"].pk, "submit": "1", "slides": [ready.pk],
                               "priority": "urgent"})
    assert forged.status_code == 200 and not Prediction.objects.exists()
    assert "Select a valid choice. urgent is not one of the available choices." in forged.content.decode()

    client.force_login(carol)
    assert 'value="urgent"' in client.get(url).content.decode()


def test_a_members_rerun_of_urgent_work_is_normal(pipeline_rows, alice, carol, experiment, ready):
    urgent = submit(carol, experiment, "urgent").json()["id"]
    assert token_client(alice).post(f"{API}/predictions/{urgent}/rerun/").status_code == 202
    assert token_client(carol).post(f"{API}/predictions/{urgent}/rerun/").status_code == 202
    assert list(Prediction.objects.filter(rerun_of=urgent).order_by("pk").values_list("priority", flat=True)) == [
        "normal", "urgent"]


# -- deleting slides ------------------------------------------------------------------------------
def test_members_cannot_delete_and_other_labs_see_nothing(alice, bob, carol, experiment, ready):
    path = Path(ready.file.path)
    assert token_client(alice).delete(f"{API}/slides/{ready.pk}/").status_code == 403
    assert token_client(alice).delete(f"{API}/experiments/{experiment.pk}/").status_code == 403
    assert token_client(bob).delete(f"{API}/slides/{ready.pk}/").status_code == 404
    lab_b_manager = MemberFactory(username="dave", lab=bob.labs.get())
    bob.labs.get().managers.add(lab_b_manager)
    assert token_client(lab_b_manager).delete(f"{API}/slides/{ready.pk}/").status_code == 404

    from django.test import Client
    page = Client()
    page.force_login(alice)
    assert page.get(reverse("experiments:slide_delete", args=[ready.pk])).status_code == 403
    assert page.post(reverse("experiments:slide_delete", args=[ready.pk])).status_code == 403
    assert "Delete…" not in page.get(experiment.get_absolute_url()).content.decode()
    assert path.exists() and Slide.objects.filter(pk=ready.pk, status=Slide.Status.READY).exists()


def test_a_manager_deletes_an_unused_slide_and_its_files(client, carol, experiment, ready,
                                                         django_capture_on_commit_callbacks):
    file, thumbnail = Path(ready.file.path), Path(ready.thumbnail.path)
    client.force_login(carol)
    confirm = client.get(reverse("experiments:slide_delete", args=[ready.pk])).content.decode()
    assert "Delete the slide “case-07.svs”?" in confirm and "its file (" in confirm
    assert Path(ready.file.path).exists()                       # asking is not deleting
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(reverse("experiments:slide_delete", args=[ready.pk]), follow=True)
    assert "case-07.svs deleted; its file is removed from storage." in done.content.decode()
    assert not Slide.objects.filter(pk=ready.pk).exists()
    assert not file.exists() and not thumbnail.exists()


def test_results_stay_readable_after_their_slide_is_deleted(carol, alice_client, experiment, ready,
                                                            django_capture_on_commit_callbacks):
    run = SlideRunFactory(prediction=PredictionFactory(experiment=experiment, status=Status.SUCCEEDED),
                          slide=ready, metrics={"tissue_area_mm2": 1.25, "tissue_fraction": 0.5})
    file = Path(ready.file.path)
    with django_capture_on_commit_callbacks(execute=True):
        answer = token_client(carol).delete(f"{API}/slides/{ready.pk}/")
    assert answer.status_code == 204
    assert not file.exists()
    ready.refresh_from_db()
    assert ready.status == Slide.Status.DELETED and not ready.file and ready.deleted_by == carol
    assert ready.sha256 and ready.size_bytes          # provenance kept
    assert experiment.lab.storage_used() == 0          # and its storage freed

    page = alice_client.get(run.prediction.get_absolute_url())
    assert page.status_code == 200 and "case-07.svs" in page.content.decode()
    figures = alice_client.get(f"{API}/predictions/{run.prediction.pk}/results/").json()
    assert figures["slides"][0]["metrics"]["tissue_area_mm2"] == 1.25
    viewer = alice_client.get(reverse("experiments:viewer", args=[ready.pk])).content.decode()
    assert "This slide was deleted by carol" in viewer and "its image is no longer stored" in viewer
    assert alice_client.get(reverse("experiments:slide_dzi", args=[ready.pk])).status_code == 404
    detail = alice_client.get(experiment.get_absolute_url()).content.decode()
    assert "Deleted" in detail and "by carol" in detail
    # A deleted slide cannot be analysed again.
    assert submit(carol, experiment, "normal").status_code == 400


def test_nothing_is_deleted_while_work_on_it_waits(carol, client, experiment, ready):
    queued = SlideRunFactory(prediction=PredictionFactory(experiment=experiment, status=Status.QUEUED), slide=ready)
    answer = token_client(carol).delete(f"{API}/slides/{ready.pk}/")
    assert answer.status_code == 409
    assert f"Prediction #{queued.prediction.pk} is still queued or running" in answer.json()["detail"]
    assert token_client(carol).delete(f"{API}/experiments/{experiment.pk}/").status_code == 409
    client.force_login(carol)
    page = client.post(reverse("experiments:delete", args=[experiment.pk]), follow=True).content.decode()
    assert "Not deleted: Prediction #" in page
    assert Path(ready.file.path).exists() and Experiment.objects.filter(pk=experiment.pk).exists()


def test_a_manager_deletes_an_experiment_with_its_slides_and_results(client, carol, experiment, ready,
                                                                     django_capture_on_commit_callbacks):
    run = SlideRunFactory(prediction=PredictionFactory(experiment=experiment, status=Status.SUCCEEDED), slide=ready)
    unused = SlideFactory(experiment=experiment, original_name="spare.svs")
    files = [Path(ready.file.path), Path(unused.file.path)]
    client.force_login(carol)
    confirm = client.get(reverse("experiments:delete", args=[experiment.pk])).content.decode()
    assert "its 2 slide(s) and their files" in confirm and "its 1 prediction(s)" in confirm
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(reverse("experiments:delete", args=[experiment.pk]), follow=True)
    assert "deleted, with its slides and results" in done.content.decode()
    assert not Experiment.objects.filter(pk=experiment.pk).exists()
    assert not Slide.objects.filter(pk__in=[ready.pk, unused.pk]).exists()
    assert not Prediction.objects.filter(pk=run.prediction_id).exists() and not SlideRun.objects.exists()
    assert not any(f.exists() for f in files)
