"""REST API: experiments and slides (create, list, upload, import), authentication and errors."""

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from experiments.models import Experiment, Slide
from tests.conftest import CMU_SLIDE

API = "/api/v1"


@pytest.fixture
def alice_api(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    return client


def test_without_credentials_the_api_answers_401_in_json_not_a_login_redirect(db, client):
    response = client.get(f"{API}/experiments/")
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert "credentials were not provided" in response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Token")


def test_a_wrong_token_is_401(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-key")
    assert client.get(f"{API}/experiments/").status_code == 401


def test_token_and_session_both_authenticate(alice_api, alice_client, experiment):
    by_token = alice_api.get(f"{API}/experiments/").json()
    by_session = alice_client.get(f"{API}/experiments/").json()
    assert [e["name"] for e in by_token["results"]] == ["Liver fibrosis"]
    assert by_token["results"] == by_session["results"]
    assert by_token["count"] == 1 and by_token["next"] is None
    root = alice_api.get(f"{API}/").json()
    assert set(root) == {"experiments", "slides", "pipelines", "models", "predictions", "queue", "workers"}
    assert root["queue"].endswith("/api/v1/queue/")


def test_session_writes_need_the_csrf_token(alice, experiment):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(f"{API}/experiments/", {"name": "No CSRF"}, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


def test_create_an_experiment_in_my_only_lab(alice_api, alice, lab_a):
    response = alice_api.post(f"{API}/experiments/", {"name": "Batch 7", "description": "Sirius red"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["lab"] == lab_a.pk and body["lab_name"] == "Pathology A"
    assert body["created_by"] == "alice" and body["slide_count"] == 0
    assert body["url"].endswith(f"/api/v1/experiments/{body['id']}/")
    assert Experiment.objects.get(pk=body["id"]).created_by == alice


def test_experiment_field_errors(alice_api, alice, lab_a, lab_b, experiment):
    duplicate = alice_api.post(f"{API}/experiments/", {"name": "Liver fibrosis"}, format="json")
    assert duplicate.status_code == 400
    assert "already has an experiment called" in duplicate.json()["name"][0]

    other_lab = alice_api.post(f"{API}/experiments/", {"name": "X", "lab": lab_b.pk}, format="json")
    assert other_lab.status_code == 400 and "lab" in other_lab.json()

    missing_name = alice_api.post(f"{API}/experiments/", {}, format="json")
    assert missing_name.json() == {"name": ["This field is required."]}

    lab_c = type(lab_a).objects.create(name="Pathology C")
    lab_c.members.add(alice)
    ambiguous = alice_api.post(f"{API}/experiments/", {"name": "Which lab?"}, format="json")
    assert ambiguous.status_code == 400
    assert ambiguous.json()["lab"] == ["Choose the lab this experiment belongs to."]


def test_rename_an_experiment(alice_api, experiment):
    response = alice_api.patch(f"{API}/experiments/{experiment.pk}/", {"notes": "re-stained"}, format="json")
    assert response.status_code == 200 and response.json()["notes"] == "re-stained"
    assert alice_api.put(f"{API}/experiments/{experiment.pk}/", {}, format="json").status_code == 405


def test_upload_a_slide_through_the_api_queues_its_check(alice_api, experiment, django_capture_on_commit_callbacks):
    with open(CMU_SLIDE, "rb") as fh, django_capture_on_commit_callbacks() as callbacks:
        response = alice_api.post(f"{API}/experiments/{experiment.pk}/slides/", {"files": fh}, format="multipart")
    assert response.status_code == 201, response.content
    [slide] = response.json()
    assert slide["original_name"] == CMU_SLIDE.name and slide["status"] == "pending"
    assert slide["size_bytes"] == CMU_SLIDE.stat().st_size
    assert len(callbacks) == 1   # validate_slide, sent after commit
    listed = alice_api.get(f"{API}/experiments/{experiment.pk}/slides/").json()
    assert [s["id"] for s in listed["results"]] == [slide["id"]]


def test_upload_over_the_limit_is_413_and_stores_nothing(alice_api, experiment, settings,
                                                        django_capture_on_commit_callbacks):
    settings.SLIDE_UPLOAD_MAX_BYTES = 100_000
    with open(CMU_SLIDE, "rb") as fh, django_capture_on_commit_callbacks() as callbacks:
        response = alice_api.post(f"{API}/experiments/{experiment.pk}/slides/", {"files": fh}, format="multipart")
    assert response.status_code == 413
    body = response.json()
    assert "larger than the upload limit" in body["detail"] and body["max_bytes"] == 100_000
    assert not Slide.objects.exists() and callbacks == []


def test_upload_without_a_file_is_a_field_error(alice_api, experiment):
    response = alice_api.post(f"{API}/experiments/{experiment.pk}/slides/", {"note": "x"}, format="multipart")
    assert response.status_code == 400
    assert "Choose at least one slide file" in response.json()["files"][0]
    json_body = alice_api.post(f"{API}/experiments/{experiment.pk}/slides/", {"files": []}, format="json")
    assert json_body.status_code == 415


def test_import_from_the_share(alice_api, experiment, share, django_capture_on_commit_callbacks):
    (share / "2026").mkdir()
    (share / "2026" / "case-01.svs").write_bytes(CMU_SLIDE.read_bytes())
    with django_capture_on_commit_callbacks() as callbacks:
        response = alice_api.post(f"{API}/experiments/{experiment.pk}/slides/import/",
                                  {"paths": ["2026/case-01.svs"]}, format="json")
    assert response.status_code == 201, response.content
    [slide] = response.json()
    assert slide["source"] == "import" and slide["import_path"] == "2026/case-01.svs"
    assert len(callbacks) == 1

    outside = alice_api.post(f"{API}/experiments/{experiment.pk}/slides/import/",
                             {"paths": ["../../etc/passwd"]}, format="json")
    assert outside.status_code == 400 and "outside the lab's import folder" in outside.json()["paths"][0]
    missing = alice_api.post(f"{API}/experiments/{experiment.pk}/slides/import/",
                             {"paths": ["2026/" + "x" * 400 + ".svs"]}, format="json")
    assert missing.status_code == 400 and "does not exist" in missing.json()["paths"][0]


def test_import_when_the_share_is_not_configured(alice_api, experiment):
    response = alice_api.post(f"{API}/experiments/{experiment.pk}/slides/import/", {"paths": ["a.svs"]},
                              format="json")
    assert response.status_code == 400 and "not enabled" in response.json()["paths"][0]


def test_slides_list_filters_and_pagination(alice_api, experiment):
    for i in range(3):
        Slide.objects.create(experiment=experiment, original_name=f"s{i}.svs",
                             status=Slide.Status.READY if i else Slide.Status.INVALID, error="" if i else "bad")
    ready = alice_api.get(f"{API}/slides/", {"experiment": experiment.pk, "status": "ready"}).json()
    assert sorted(s["original_name"] for s in ready["results"]) == ["s1.svs", "s2.svs"]
    page = alice_api.get(f"{API}/slides/", {"page_size": 2}).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert alice_api.get(f"{API}/slides/", {"status": "bogus"}).status_code == 400
    assert alice_api.get(f"{API}/slides/", {"page": 9}).status_code == 404
    invalid = [s for s in alice_api.get(f"{API}/slides/").json()["results"] if s["status"] == "invalid"][0]
    assert invalid["error"] == "bad" and invalid["thumbnail_url"] is None
    assert alice_api.get(f"{API}/slides/{invalid['id']}/thumbnail/").status_code == 404
