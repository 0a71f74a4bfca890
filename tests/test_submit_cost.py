"""A submit costs the same whatever waits in the queue: the same SQL queries for the request and
its 202 answer, for its own dispatch after the commit, and for the worker that takes its start
message, with 3 or 300 predictions queued; and the position it answers is the one the full queue
plan gives. (Times: bench/submit_cost.py.)"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from predictions import dispatch, engine, queueing
from predictions.models import Prediction, SlideRun, Status
from tests.conftest import token_client
from tests.factories import ExperimentFactory, SlideFactory

pytestmark = pytest.mark.django_db


def fill_queue(size, experiments, pipeline, slides):
    """Queued predictions (one slide run each) until `size` wait, the labs' turns interleaved."""
    missing = size - Prediction.objects.filter(status=Status.QUEUED).count()
    created = Prediction.objects.bulk_create([
        Prediction(experiment=experiments[i % 2], pipeline=pipeline, params={}, turn=i // 2 + 1)
        for i in range(missing)])
    SlideRun.objects.bulk_create([SlideRun(prediction=p, slide=slides[p.experiment_id], slide_sha256="ab" * 32)
                                  for p in created])


def submit(client, body, django_capture_on_commit_callbacks):
    """(queries of the request, of its own dispatch after the commit, of the worker that takes its
    start message; the 202 answer)."""
    with CaptureQueriesContext(connection) as request, django_capture_on_commit_callbacks() as callbacks:
        response = client.post("/api/v1/predictions/", body, format="json")
    assert response.status_code == 202, response.content
    # After its commit the request runs its own dispatch (the first prediction's prepare is in
    # flight, so it only counts), then sends the start message (captured here, not sent).
    assert len(callbacks) == 2
    with CaptureQueriesContext(connection) as after, django_capture_on_commit_callbacks():
        callbacks[0]()
    # The start message's worker: its queue's window has room, so it takes the dispatcher's lock
    # and reads the run order, which stops at the first prediction (still preparing).
    with CaptureQueriesContext(connection) as start, django_capture_on_commit_callbacks():
        engine.start(response.json()["id"])
    return len(request), len(after), len(start), response.json()


def test_a_submit_costs_the_same_with_3_or_300_waiting(pipeline_rows, alice, experiment, lab_b,
                                                       django_capture_on_commit_callbacks):
    other = ExperimentFactory(lab=lab_b)
    slides = {e.pk: SlideFactory(experiment=e, source=None, status="ready", width=2220, height=2967, sha256="ab" * 32)
              for e in (experiment, other)}
    client = token_client(alice)
    body = {"experiment": experiment.pk, "pipeline": "ihc-dab", "slides": [slides[experiment.pk].pk]}
    counts = {}
    for size in (3, 300):
        fill_queue(size, [experiment, other], pipeline_rows["ihc-dab"], slides)
        with django_capture_on_commit_callbacks():
            dispatch.dispatch_all(quick=True)      # the first one starts: from here the queue holds still
        submit(client, body, django_capture_on_commit_callbacks)          # warm: rates, plan
        request, after, start, answer = submit(client, body, django_capture_on_commit_callbacks)
        counts[size] = (request, after, start)
        full_plan = {e["pk"]: e for e in queueing.waiting(load=False)}
        assert answer["queue_position"] == full_plan[answer["id"]]["position"]
        assert answer["eta_seconds"] == full_plan[answer["id"]]["eta_seconds"]
    assert counts[3] == counts[300], counts

