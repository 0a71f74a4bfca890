"""Lab isolation, login and CSRF over every URL of the project, generated from the URL
configuration: a new view is checked the day it is added, or this test fails until it is.

Lab A's experiment, slide, prediction and slide run all get the same id, so any id in any URL
points at one of lab A's objects. A member of lab B must get 404 on every such URL (pages, API,
files alike), while lab A's member reaches it.
"""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from predictions import engine
from predictions.models import SlideRun, Status
from predictions.pipelines import Plan
from tests.conftest import csrf_checking_client, token_client
from tests.factories import ExperimentFactory, PredictionFactory, SlideFactory, SlideRunFactory

SAME_ID = 4242
PUBLIC = {"login", "healthz", "api-schema", "api-docs"}          # no login needed
CATALOGUE = re.compile(r"^api:(pipeline|registeredmodel)-")       # shared by every lab, read-only
STAFF_ONLY = {"predictions:monitoring"}
NO_LAB_DATA = {"logout", "experiments:list", "experiments:create", "predictions:history", "predictions:dashboard",
               "predictions:dashboard_live", "api:api-root", "api:queue", "api:workers", "api:experiment-list",
               "api:slide-list", "api:prediction-list"}


def every_url():
    def walk(patterns, prefix_ns=None):
        for p in patterns:
            if isinstance(p, URLResolver):
                if p.namespace == "admin" or str(p.pattern).startswith("admin"):
                    continue
                yield from walk(p.url_patterns, ":".join(filter(None, [prefix_ns, p.namespace])) or None)
            elif isinstance(p, URLPattern) and p.name:
                yield (f"{prefix_ns}:{p.name}" if prefix_ns else p.name), list(p.pattern.regex.groupindex)
    return sorted(set((name, tuple(groups)) for name, groups in walk(get_resolver().url_patterns)))


def url_for(name, groups):
    values = {"pk": SAME_ID, "experiment_pk": SAME_ID, "run_id": SAME_ID, "level": 0, "col": 0, "row": 0,
              "name": "tiles.csv", "format": "json"}
    unknown = [g for g in groups if g not in values]
    assert not unknown, f"{name}: teach this sweep what {unknown} stands for"
    return reverse(name, kwargs={g: values[g] for g in groups})


@pytest.fixture
def lab_a_objects(alice, lab_a, pipelines, django_capture_on_commit_callbacks):
    """One of each of lab A's objects, all with id SAME_ID, with real files and a real result."""
    experiment = ExperimentFactory(pk=SAME_ID, name="Sweep", lab=lab_a, created_by=alice)
    slide = SlideFactory(pk=SAME_ID, experiment=experiment, original_name="case.svs")
    prediction = PredictionFactory(pk=SAME_ID, experiment=experiment, pipeline=pipelines["nuclei-density"],
                                   params=pipelines["nuclei-density"].code.parse_params(
                                       {"tile_size": 512, "min_tissue": 0.25}),
                                   status=Status.RUNNING, triggered_by=alice)
    SlideRunFactory(pk=SAME_ID, prediction=prediction, slide=slide)
    # The task bodies, run in-process to build a finished result (queueing is tested elsewhere).
    with django_capture_on_commit_callbacks(execute=False):
        engine.prepare(SAME_ID)
        run = SlideRun.objects.get(pk=SAME_ID)
        for index in range(len(Plan.from_json(run.plan).batches())):
            engine.run_batch(SAME_ID, index, "cpu", "sweep")
        engine.aggregate(SAME_ID)
    assert SlideRun.objects.get(pk=SAME_ID).status == Status.SUCCEEDED
    return experiment


def test_every_url_of_lab_a_is_404_for_lab_b_and_reachable_for_lab_a(lab_a_objects, alice_client, bob_client, bob, alice):
    checked = 0
    clients_b = {"session": bob_client, "token": token_client(bob)}
    for name, groups in every_url():
        if name in PUBLIC or name in NO_LAB_DATA or CATALOGUE.match(name) or name in STAFF_ONLY or not groups \
                or name == "predictions:compare":
            continue
        url = url_for(name, groups)
        # Pages take the session; the API takes both.
        for how, client in (clients_b.items() if name.startswith("api:") else [("session", bob_client)]):
            for method in ("get", "post"):
                response = getattr(client, method)(url)
                assert response.status_code in (404, 405), f"{method.upper()} {url} as lab B ({how}): {response.status_code}"
                if response.status_code == 405:
                    continue
        reached = alice_client.get(url)
        # Sanity: the URL does point at lab A's object (an error page of its own is fine, not 404).
        assert reached.status_code != 404 and reached.status_code < 500, f"GET {url} as lab A: {reached.status_code}"
        checked += 1
    assert checked >= 20, checked
    compare = f"{reverse('predictions:compare')}?a={SAME_ID}&b={SAME_ID}"
    assert bob_client.get(compare).status_code == 404 and alice_client.get(compare).status_code == 200


def test_lists_and_dashboards_show_lab_b_nothing_of_lab_a(lab_a_objects, bob_client, bob):
    token = token_client(bob)
    for name, groups in every_url():
        if name not in NO_LAB_DATA or name in ("logout", "experiments:create"):
            continue
        for client in (bob_client, token):
            response = client.get(url_for(name, groups))
            assert response.status_code in (200, 302, 405), (name, response.status_code)
            body = response.content.decode(errors="replace")
            assert "Sweep" not in body and "case.svs" not in body, f"{name} shows lab A's data to lab B"


def test_login_is_required_everywhere_but_the_public_pages(lab_a_objects, client):
    for name, groups in every_url():
        url = url_for(name, groups)
        response = client.get(url)
        if name in PUBLIC:
            assert response.status_code in (200, 405), (url, response.status_code)
        elif name.startswith("api:"):
            assert response.status_code in (401, 403), (url, response.status_code)
        else:
            assert response.status_code == 302 and "/accounts/login/" in response["Location"], (url, response.status_code)


def test_every_form_post_needs_the_csrf_token(lab_a_objects, alice):
    strict = csrf_checking_client(alice)
    posted = 0
    for name, groups in every_url():
        if name in PUBLIC:
            continue
        response = strict.post(url_for(name, groups), {})
        if response.status_code == 405:
            continue
        assert response.status_code == 403, f"POST {name} without a CSRF token: {response.status_code}"
        posted += 1
    assert posted >= 5


def test_admin_is_for_staff_only(alice_client, admin_client):
    assert alice_client.get("/admin/").status_code == 302
    assert admin_client.get("/admin/").status_code == 200
    assert admin_client.get("/admin/django_celery_results/taskresult/").status_code == 200
    assert admin_client.get("/admin/django_celery_beat/periodictask/").status_code == 200
