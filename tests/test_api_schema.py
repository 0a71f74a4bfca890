"""The OpenAPI 3 schema validates, the docs page renders, and a property-based run of
schemathesis over every operation (authenticated with a token) finds no server error."""

import pytest
import schemathesis
import yaml
from django.contrib.staticfiles import finders
from django.core.files.base import ContentFile
from django.core.management import call_command
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error

from experiments.models import Experiment, Slide
from predictions.models import Pipeline, Prediction, SlideRun, Status

# Examples per operation: ~25 operations x (generated + the same on real ids) stays within about a
# minute on two cores.
EXAMPLES_PER_OPERATION = 15
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_schema_validates_without_warnings(tmp_path):
    target = tmp_path / "schema.yaml"
    # --fail-on-warn: a view or field drf-spectacular cannot describe fails the test.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    schema = yaml.safe_load(target.read_text())
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    for expected in ("/api/v1/experiments/", "/api/v1/experiments/{id}/slides/", "/api/v1/predictions/",
                     "/api/v1/predictions/{id}/cancel/", "/api/v1/predictions/{id}/rerun/",
                     "/api/v1/predictions/{id}/results/", "/api/v1/predictions/{id}/results.csv",
                     "/api/v1/pipelines/", "/api/v1/models/", "/api/v1/queue/", "/api/v1/workers/"):
        assert expected in paths, expected
    create = schema["paths"]["/api/v1/predictions/"]["post"]
    assert "202" in create["responses"] and "400" in create["responses"]
    assert create["requestBody"]["content"]["application/json"]["examples"]   # documented with examples
    assert set(schema["components"]["securitySchemes"]) == {"tokenAuth", "cookieAuth"}


def test_generating_the_schema_leaves_the_history_page_filters_alone(client, db, alice_client):
    """drf-spectacular reads filter fields; the history page's choices must stay per request."""
    from predictions.catalogue import sync_pipelines
    from predictions.filters import PredictionFilter

    sync_pipelines()
    assert client.get("/api/schema/").status_code == 200
    choices = dict(PredictionFilter(request=None).form.fields["pipeline"].choices)
    assert "ihc-dab" in choices


def test_schema_is_served_to_anyone_and_json_on_request(client, db):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "Histo-IA API"


def test_docs_page_renders_with_local_assets(client, db):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    # Swagger UI's start-up script is a file of its own: the Content-Security-Policy refuses inline ones.
    script = client.get("/api/docs/?script=")
    assert script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in script.content.decode() and "/api/schema/" in script.content.decode()
    # Served from the drf-spectacular-sidecar app, not a CDN: works on machines without internet.
    assert "cdn.jsdelivr" not in html and "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")


# -- schemathesis -----------------------------------------------------------------------------------
@pytest.fixture
def api_schema(db):
    """The schema, loaded through the WSGI application that schemathesis then calls in-process."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    from histoia.wsgi import application

    # As Django's test client does: the end of a request must not close the test's connection
    # (and with it the test's transaction).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/", application)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def api_data(db, alice, experiment, bob):
    """Real objects, so generated requests also reach existing rows (not only 404s)."""
    from predictions.catalogue import sync_pipelines

    sync_pipelines()
    slide = Slide.objects.create(experiment=experiment, original_name="cmu.svs", status=Slide.Status.READY,
                                 sha256="ab" * 32, width=2220, height=2967, mpp=0.499)
    slide.thumbnail.save("t.png", ContentFile(b"\x89PNG fake"), save=True)
    pipeline = Pipeline.objects.get(name="ihc-dab")
    done = Prediction.objects.create(experiment=experiment, pipeline=pipeline, params={}, triggered_by=alice,
                                     status=Status.SUCCEEDED)
    run = SlideRun.objects.create(prediction=done, slide=slide, status=Status.SUCCEEDED, metrics={"h_score": 1.0})
    run.tile_table.save("tiles.csv", ContentFile(b"tile\n0\n"), save=True)
    running = Prediction.objects.create(experiment=experiment, pipeline=pipeline, params={}, status=Status.RUNNING)
    SlideRun.objects.create(prediction=running, slide=slide, status=Status.RUNNING)
    Experiment.objects.create(name="Bob's", lab=bob.labs.get())
    return {
        "token": Token.objects.create(user=alice).key,
        "ids": {"experiments": experiment.pk, "slides": slide.pk, "predictions": done.pk,
                "pipelines": pipeline.pk, "models": 1},
        "run_id": run.pk,
    }


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_operation_answers_a_server_error(case, api_data, settings_override):
    headers = {"Authorization": f"Token {api_data['token']}"}
    case.call_and_validate(headers=headers, checks=[not_a_server_error])
    if case.path_parameters:
        # The same request on rows that exist, so it gets past the 404.
        resource = case.path.split("/")[3]
        known = dict(case.path_parameters)
        if "id" in known:
            known["id"] = api_data["ids"].get(resource, known["id"])
        if "run_id" in known:
            known["run_id"] = api_data["run_id"]
        case.path_parameters = known
        case.call_and_validate(headers=headers, checks=[not_a_server_error])


@pytest.fixture
def settings_override(settings, tmp_path):
    settings.SLIDE_UPLOAD_MAX_BYTES = 200_000
    share = tmp_path / "share"
    share.mkdir()
    for lab in ("pathology-a", "pathology-b"):   # each lab imports from its own folder
        (share / lab).mkdir()
        (share / lab / "a.svs").write_bytes(b"not a slide")
    settings.SLIDE_IMPORT_ROOT = str(share)
