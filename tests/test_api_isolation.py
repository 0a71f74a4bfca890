"""REST API: a second lab's token cannot list, read, change, cancel, re-run or download the first
lab's objects; every one of them is 404 on every verb, exactly as for an id that does not exist."""

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from experiments.models import Slide
from predictions.models import Prediction, SlideRun, Status

API = "/api/v1"


def token_client(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def pipelines(db):
    from predictions.catalogue import sync_pipelines
    from predictions.models import Pipeline

    sync_pipelines()
    return {p.name: p for p in Pipeline.objects.filter(installed=True)}


@pytest.fixture
def lab_a_objects(pipelines, alice, experiment):
    from django.core.files.base import ContentFile

    slide = Slide.objects.create(experiment=experiment, original_name="secret.svs", status=Slide.Status.READY,
                                 sha256="cd" * 32)
    slide.thumbnail.save("t.png", ContentFile(b"\x89PNG fake"), save=True)
    prediction = Prediction.objects.create(experiment=experiment, pipeline=pipelines["ihc-dab"], params={},
                                           status=Status.SUCCEEDED, triggered_by=alice)
    run = SlideRun.objects.create(prediction=prediction, slide=slide, status=Status.SUCCEEDED,
                                  metrics={"h_score": 120.0})
    run.tile_table.save("tiles.csv", ContentFile(b"tile,h_score\n0,120\n"), save=True)
    running = Prediction.objects.create(experiment=experiment, pipeline=pipelines["ihc-dab"], params={},
                                        status=Status.RUNNING, triggered_by=alice)
    SlideRun.objects.create(prediction=running, slide=slide, status=Status.RUNNING)
    return {"experiment": experiment, "slide": slide, "prediction": prediction, "run": run, "running": running}


def test_alice_reaches_her_own_objects(lab_a_objects, alice):
    """The control: every URL below works for the owner, so the 404s are about the lab."""
    alice_api = token_client(alice)
    o = lab_a_objects
    for url in (f"{API}/experiments/{o['experiment'].pk}/", f"{API}/slides/{o['slide'].pk}/",
                f"{API}/slides/{o['slide'].pk}/thumbnail/", f"{API}/predictions/{o['prediction'].pk}/",
                f"{API}/predictions/{o['prediction'].pk}/results/",
                f"{API}/predictions/{o['prediction'].pk}/results.csv",
                f"{API}/predictions/{o['prediction'].pk}/runs/{o['run'].pk}/tiles.csv"):
        assert alice_api.get(url).status_code == 200, url
    assert len(alice_api.get(f"{API}/queue/").json()["results"]) == 1


def test_another_labs_token_lists_nothing_of_lab_a(lab_a_objects, bob):
    bob_api = token_client(bob)
    for url in ("experiments", "slides", "predictions"):
        body = bob_api.get(f"{API}/{url}/").json()
        assert body["count"] == 0 and body["results"] == [], url
    # Filtering by lab A's ids does not reveal anything either.
    assert bob_api.get(f"{API}/predictions/", {"experiment": lab_a_objects["experiment"].pk}).json()["count"] == 0
    assert bob_api.get(f"{API}/slides/", {"experiment": lab_a_objects["experiment"].pk}).json()["count"] == 0
    assert bob_api.get(f"{API}/queue/").json() == {"count": 0, "next": None, "previous": None, "results": []}


def test_another_labs_token_gets_404_on_every_verb(lab_a_objects, bob):
    bob_api = token_client(bob)
    o = lab_a_objects
    e, s, p, r, running = o["experiment"].pk, o["slide"].pk, o["prediction"].pk, o["run"].pk, o["running"].pk
    calls = [
        ("get", f"{API}/experiments/{e}/"),
        ("patch", f"{API}/experiments/{e}/"),
        ("get", f"{API}/experiments/{e}/slides/"),
        ("post", f"{API}/experiments/{e}/slides/"),
        ("post", f"{API}/experiments/{e}/slides/import/"),
        ("get", f"{API}/slides/{s}/"),
        ("get", f"{API}/slides/{s}/thumbnail/"),
        ("get", f"{API}/predictions/{p}/"),
        ("post", f"{API}/predictions/{running}/cancel/"),
        ("post", f"{API}/predictions/{p}/cancel/"),
        ("post", f"{API}/predictions/{p}/rerun/"),
        ("get", f"{API}/predictions/{p}/results/"),
        ("get", f"{API}/predictions/{p}/results.csv"),
        ("get", f"{API}/predictions/{p}/runs/{r}/tiles.csv"),
    ]
    for verb, url in calls:
        response = getattr(bob_api, verb)(url, {"notes": "mine now", "paths": ["a.svs"]}, format="json") \
            if verb in ("post", "patch") and not url.endswith("/slides/") else getattr(bob_api, verb)(url)
        assert response.status_code == 404, (verb, url, response.status_code)
        if response["Content-Type"].startswith("application/json"):
            assert "secret" not in response.content.decode() and "Liver" not in response.content.decode()

    # And nothing changed.
    o["experiment"].refresh_from_db()
    assert o["experiment"].notes == ""
    o["running"].refresh_from_db()
    assert o["running"].status == Status.RUNNING
    assert Prediction.objects.count() == 2


def test_another_labs_token_cannot_submit_on_lab_a(lab_a_objects, bob):
    response = token_client(bob).post(f"{API}/predictions/", {
        "experiment": lab_a_objects["experiment"].pk, "pipeline": "ihc-dab"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"experiment": [f"No experiment {lab_a_objects['experiment'].pk} in your labs."]}
    assert Prediction.objects.count() == 2


def test_another_labs_token_cannot_create_an_experiment_in_lab_a(lab_a_objects, bob, lab_a):
    response = token_client(bob).post(f"{API}/experiments/", {"name": "Intruder", "lab": lab_a.pk}, format="json")
    assert response.status_code == 400 and "lab" in response.json()
    assert not lab_a.experiments.filter(name="Intruder").exists()
