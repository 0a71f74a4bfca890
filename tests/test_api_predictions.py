"""REST API: submitting predictions, progress, cancel, re-run, results, history filters, the queue."""

import csv
import io
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_results.models import TaskResult

from experiments.models import Experiment, Slide
from predictions import engine, queueing
from predictions.models import BatchResult, Prediction, SlideRun, Status
from predictions.pipelines.ihc_dab import IhcDab
from tests.conftest import CMU_SLIDE, token_client, wait_final, wait_for

API = "/api/v1"


@pytest.fixture
def alice_api(alice):
    return token_client(alice)


def ready_slide(experiment, name="cmu.svs", status=Slide.Status.READY):
    return Slide.objects.create(experiment=experiment, original_name=name, status=status, sha256="ab" * 32)


# -- end to end, against the real workers ---------------------------------------------------------
@pytest.mark.worker
def test_api_flow_end_to_end(workers, pipelines, alice, alice_api):
    # 1. an experiment
    created = alice_api.post(f"{API}/experiments/", {"name": "API flow"}, format="json")
    assert created.status_code == 201, created.content
    experiment = created.json()

    # 2. the shared slide, uploaded, checked by the cpu worker
    with open(CMU_SLIDE, "rb") as fh:
        uploaded = alice_api.post(f"{API}/experiments/{experiment['id']}/slides/", {"files": fh}, format="multipart")
    assert uploaded.status_code == 201, uploaded.content
    slide_url = uploaded.json()[0]["url"]
    slide = wait_for(lambda: (s := alice_api.get(slide_url).json())["status"] != "pending" and s,
                     timeout=120, message="the uploaded slide to be checked")
    assert slide["status"] == "ready", slide["error"]
    assert slide["vendor"] == "aperio" and slide["mpp"] == pytest.approx(0.499, abs=1e-3)
    assert alice_api.get(slide["thumbnail_url"])["Content-Type"] == "image/png"

    # 3. submit: answered at once with 202, the id and where to watch it
    started = time.monotonic()
    submitted = alice_api.post(f"{API}/predictions/", {
        "experiment": experiment["id"], "pipeline": "ihc-dab", "params": {"tile_size": 256}}, format="json")
    assert time.monotonic() - started < 5
    assert submitted.status_code == 202, submitted.content
    body = submitted.json()
    # Queued when answered (a fast worker may already have started it by the time it is read).
    assert body["status"] in ("queued", "running") and body["trigger"] == "api" and body["triggered_by"] == "alice"
    assert submitted["Location"] == body["status_url"] and body["status_url"].endswith(f"/predictions/{body['id']}/")
    assert body["params"]["tile_size"] == 256

    # 4. poll progress to the end; it only goes up
    seen = []

    def ended():
        state = alice_api.get(body["status_url"]).json()
        seen.append((state["status"], state["progress"]))
        return state["status"] in ("succeeded", "partial", "failed", "cancelled") and state
    final = wait_for(ended, timeout=240, interval=0.3, message="the prediction to end")
    assert final["status"] == "succeeded", final["error"]
    assert final["progress"] == 1.0 and final["eta_seconds"] is None and final["queue_position"] is None
    progress = [p for _, p in seen]
    assert progress == sorted(progress)
    assert final["runs"][0]["status"] == "succeeded" and final["runs"][0]["slide"] == slide["id"]
    assert final["provenance"]["pipeline_version"] == IhcDab.version and final["provenance"]["trigger"] == "api"

    # 5. results as JSON and CSV: the stored figures
    stored = SlideRun.objects.get(prediction_id=body["id"])
    results = alice_api.get(final["links"]["results"]).json()
    assert results["status"] == "succeeded"
    [row] = results["slides"]
    assert row["metrics"] == stored.metrics and row["slide_sha256"] == stored.slide_sha256
    assert "h_score" in results["metric_names"] and "dab_positive_fraction" in results["metric_names"]

    response = alice_api.get(final["links"]["results_csv"])
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    [csv_row] = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert csv_row["slide"] == CMU_SLIDE.name and csv_row["status"] == "succeeded"
    for name, value in stored.metrics.items():
        if value is None:
            assert csv_row[name] == ""
        elif isinstance(value, (bool, str)):
            assert csv_row[name] == str(value)
        else:
            assert float(csv_row[name]) == pytest.approx(value), name

    tiles = alice_api.get(row["tile_table_url"])
    assert tiles.status_code == 200
    table = list(csv.DictReader(io.StringIO(b"".join(tiles.streaming_content).decode())))
    assert len(table) == len(stored.plan["tiles"]) > 0


@pytest.mark.worker
def test_workers_endpoint_lists_the_live_workers_and_queue_depths(workers, alice_api):
    from django.core.cache import cache

    cache.clear()
    body = alice_api.get(f"{API}/workers/").json()
    names = {w["name"]: w for w in body["workers"]}
    assert workers.cpu_name in names and workers.gpu_name in names
    assert names[workers.cpu_name]["queues"] == ["cpu"] and names[workers.gpu_name]["queues"] == ["gpu"]
    assert names[workers.gpu_name]["concurrency"] == 1
    queues = {q["name"]: q for q in body["queues"]}
    assert set(queues) == {"cpu", "gpu"}
    assert all(isinstance(q["messages"], int) for q in queues.values())
    assert queues["cpu"]["workers"] >= 1 and queues["gpu"]["workers"] >= 1


@pytest.mark.worker
def test_what_workers_run_is_named_to_members_with_ids_and_arguments_for_staff_only(
        workers, alice, alice_api, lab_a, pipelines, make_slide):
    from django.core.cache import cache

    from tests.factories import MemberFactory

    staff_api = token_client(MemberFactory(lab=lab_a, is_staff=True))
    slide = make_slide(CMU_SLIDE)
    prediction = engine.submit(slide.experiment, pipelines["nuclei-density"], [slide], {"tile_size": 256}, user=alice)

    def running_tasks(client):
        cache.clear()
        return [t for w in client.get(f"{API}/workers/").json()["workers"] for t in w["active"]]

    seen = wait_for(lambda: running_tasks(staff_api), timeout=60, message="a task running on a worker")
    assert {"id", "args"} <= set(seen[0])
    member_view = wait_for(lambda: running_tasks(alice_api), timeout=60, message="a task running on a worker")
    assert all(set(t) == {"name"} and t["name"].startswith("predictions.") for t in member_view)
    wait_final(prediction)


# -- without workers: nothing is committed, so nothing is sent to the broker -------------------------
@pytest.fixture
def pipeline_rows(db):
    from predictions.catalogue import sync_pipelines
    from predictions.models import Pipeline

    sync_pipelines()
    return {p.name: p for p in Pipeline.objects.filter(installed=True)}


@pytest.fixture
def api_setup(pipeline_rows, alice, experiment):
    return {"client": token_client(alice), "experiment": experiment, "slide": ready_slide(experiment)}


def submit(client, **data):
    return client.post(f"{API}/predictions/", data, format="json")


def test_submit_answers_202_and_sends_its_start_after_commit(api_setup, django_capture_on_commit_callbacks):
    client, experiment = api_setup["client"], api_setup["experiment"]
    experiment.lab.managers.add(experiment.created_by)   # urgent is a lab manager's call
    with django_capture_on_commit_callbacks() as callbacks:
        response = submit(client, experiment=experiment.pk, pipeline="tissue-area", priority="urgent")
    assert response.status_code == 202
    body = response.json()
    prediction = Prediction.objects.get(pk=body["id"])
    assert prediction.status == Status.QUEUED and prediction.priority == "urgent"
    assert [r.slide_id for r in prediction.runs.all()] == [api_setup["slide"].pk]
    assert body["queue_position"] == 1 and body["eta_seconds"] > 0
    # Once the rows are committed: the submit's own dispatch (it starts the prediction at once
    # when nothing is in flight on its queue), then the start message. Its task row, "queued",
    # was written with the prediction's rows.
    assert len(callbacks) == 2
    start = TaskResult.objects.get(task_id=f"p{prediction.pk}-start")
    assert (start.status, start.task_name, start.task_args) == ("PENDING", "predictions.cpu.start_prediction",
                                                                f"[{prediction.pk}]")


@pytest.mark.parametrize("data, field, message", [
    ({"pipeline": "no-such-pipeline"}, "pipeline", "Unknown pipeline “no-such-pipeline”"),
    ({"pipeline": "ihc-dab", "pipeline_version": "9.9"}, "pipeline", "version 9.9"),
    ({"pipeline": "ihc-dab", "params": {"tile_size": 4096}}, "params", "must be at most 2048"),
    ({"pipeline": "ihc-dab", "params": {"tile_size": "big"}}, "params", "must be a whole number"),
    ({"pipeline": "ihc-dab", "params": {"colour": 1}}, "params", "Unknown parameter(s) for ihc-dab: colour"),
    ({"pipeline": "ihc-dab", "priority": "asap"}, "priority", "is not a valid choice"),
    ({"pipeline": "ihc-dab", "slides": []}, "slides", "may not be empty"),
    ({"pipeline": "ihc-dab", "experiment": 999_999}, "experiment", "No experiment 999999 in your labs."),
    ({"pipeline": "ihc-dab", "experiment": 10**30}, "experiment", "in your labs."),
    ({"pipeline": "ihc-dab", "slides": [10**30]}, "slides", "less than or equal to"),
])
def test_submit_field_errors(api_setup, data, field, message):
    response = submit(api_setup["client"], **{"experiment": api_setup["experiment"].pk, **data})
    assert response.status_code == 400
    assert message in str(response.json()[field])
    assert not Prediction.objects.exists()


def test_submit_with_a_slide_not_ready_or_from_another_experiment(api_setup, alice):
    client, experiment = api_setup["client"], api_setup["experiment"]
    pending = ready_slide(experiment, "pending.svs", Slide.Status.PENDING)
    response = submit(client, experiment=experiment.pk, pipeline="ihc-dab", slides=[api_setup["slide"].pk, pending.pk])
    assert response.status_code == 400
    assert response.json() == {"slides": ["These slides are not ready: pending.svs (pending)."]}

    other = Experiment.objects.create(name="Other", lab=experiment.lab)
    elsewhere = ready_slide(other, "elsewhere.svs")
    response = submit(client, experiment=experiment.pk, pipeline="ihc-dab", slides=[elsewhere.pk])
    assert response.json() == {"slides": [f"Not slides of experiment {experiment.pk}: {elsewhere.pk}."]}

    empty = Experiment.objects.create(name="Empty", lab=experiment.lab)
    response = submit(client, experiment=empty.pk, pipeline="ihc-dab")
    assert "no ready slides yet" in response.json()["slides"][0]
    assert not Prediction.objects.exists()


def test_submit_of_a_disabled_pipeline_or_without_a_model(api_setup, pipeline_rows):
    client, experiment = api_setup["client"], api_setup["experiment"]
    response = submit(client, experiment=experiment.pk, pipeline="tissue-classifier")
    assert response.status_code == 400
    assert "No enabled model “tissue-classifier-demo”" in response.json()["pipeline"][0]
    pipeline_rows["ihc-dab"].enabled = False
    pipeline_rows["ihc-dab"].save()
    response = submit(client, experiment=experiment.pk, pipeline="ihc-dab", pipeline_version=IhcDab.version)
    assert response.json() == {"pipeline": [f"The pipeline ihc-dab {IhcDab.version} is disabled."]}


def test_submit_still_answers_202_when_the_broker_is_away(api_setup, monkeypatch, django_capture_on_commit_callbacks):
    from kombu.exceptions import OperationalError

    from histoia.celery import app

    rows_at_send = {}

    def broker_down(name, *args, task_id=None, **kwargs):
        rows_at_send[name] = TaskResult.objects.filter(task_id=task_id, status="PENDING").count()
        raise OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr(app, "send_task", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = submit(api_setup["client"], experiment=api_setup["experiment"].pk, pipeline="tissue-area")
    assert response.status_code == 202
    prediction = Prediction.objects.get(pk=response.json()["id"])
    # The submit's dispatch tried the slide's prepare first, then the start message, whose task
    # row had been written with the prediction's rows. The unsent prepare was taken back.
    assert rows_at_send == {"predictions.cpu.prepare_slide": 0, "predictions.cpu.start_prediction": 1}
    assert prediction.status == Status.QUEUED and prediction.runs.get().status == Status.QUEUED
    # No task row is left pretending the start message is queued: the re-send sweep will send it.
    assert not TaskResult.objects.filter(task_id=engine.start_task_id(prediction)).exists()


def test_a_submit_to_a_queue_with_nothing_in_flight_starts_the_work_at_once(api_setup, pipeline_rows, monkeypatch,
                                                                           django_capture_on_commit_callbacks):
    """Work queued before, whose start message has not reached a worker (it waits behind other
    messages, or the broker lost it), is not left waiting for the minute's sweep: with nothing in
    flight on the queue, no step's end will dispatch, so the next submit does, in run order."""
    sent = []
    monkeypatch.setattr(engine, "publish", lambda name, args, **kwargs: sent.append(name))
    experiment, slide = api_setup["experiment"], api_setup["slide"]
    with django_capture_on_commit_callbacks():   # not run: its dispatch and start message never happen
        earlier = engine.submit(experiment, pipeline_rows["tissue-area"], [slide], {})
    assert Prediction.objects.get(pk=earlier.pk).status == Status.QUEUED
    with django_capture_on_commit_callbacks(execute=True):
        response = submit(api_setup["client"], experiment=experiment.pk, pipeline="tissue-area")
    assert response.status_code == 202
    earlier.refresh_from_db()
    assert earlier.status == Status.RUNNING and sent == ["predictions.cpu.prepare_slide"]
    assert Prediction.objects.get(pk=response.json()["id"]).status == Status.QUEUED   # behind it, in turn


def test_submit_still_sends_its_start_when_its_own_dispatch_fails(api_setup, monkeypatch,
                                                                django_capture_on_commit_callbacks):
    from django.db import DatabaseError

    from histoia.celery import app
    from predictions import dispatch

    def database_away(queue):
        raise DatabaseError("server closed the connection unexpectedly")

    sent = []
    monkeypatch.setattr(dispatch, "start_if_idle", database_away)
    monkeypatch.setattr(app, "send_task", lambda name, *args, **kwargs: sent.append(name))
    with django_capture_on_commit_callbacks(execute=True):
        response = submit(api_setup["client"], experiment=api_setup["experiment"].pk, pipeline="tissue-area")
    # The submit is committed: it answers 202, and its start message (whose worker dispatches) went.
    assert response.status_code == 202
    assert Prediction.objects.get(pk=response.json()["id"]).status == Status.QUEUED
    assert sent == ["predictions.cpu.start_prediction"]


# -- cancel, re-run ---------------------------------------------------------------------------------
def make_prediction(experiment, pipeline, slide, status=Status.SUCCEEDED, user=None, **fields):
    prediction = Prediction.objects.create(experiment=experiment, pipeline=pipeline, status=status,
                                           triggered_by=user, params={}, total_units=2, **fields)
    SlideRun.objects.create(prediction=prediction, slide=slide, status=status, slide_sha256=slide.sha256,
                            metrics={"tissue_area_mm2": 1.5, "tissue_fraction": 0.25, "mpp_missing": False}
                            if status == Status.SUCCEEDED else None)
    return prediction


def test_cancel_a_queued_prediction_then_409_when_cancelling_again(api_setup, pipeline_rows, alice):
    client = api_setup["client"]
    prediction = make_prediction(api_setup["experiment"], pipeline_rows["tissue-area"], api_setup["slide"],
                                 status=Status.QUEUED)
    response = client.post(f"{API}/predictions/{prediction.pk}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["cancelled_by"] == "alice"
    again = client.post(f"{API}/predictions/{prediction.pk}/cancel/")
    assert again.status_code == 409
    assert again.json() == {"detail": "This prediction has already ended (cancelled)."}


def test_cancel_of_a_finished_prediction_is_409(api_setup, pipeline_rows):
    prediction = make_prediction(api_setup["experiment"], pipeline_rows["tissue-area"], api_setup["slide"])
    response = api_setup["client"].post(f"{API}/predictions/{prediction.pk}/cancel/")
    assert response.status_code == 409 and "already ended (succeeded)" in response.json()["detail"]
    prediction.refresh_from_db()
    assert prediction.status == Status.SUCCEEDED


def test_rerun(api_setup, pipeline_rows):
    old = make_prediction(api_setup["experiment"], pipeline_rows["tissue-area"], api_setup["slide"])
    response = api_setup["client"].post(f"{API}/predictions/{old.pk}/rerun/")
    assert response.status_code == 202
    body = response.json()
    assert body["rerun_of"] == old.pk and body["trigger"] == "rerun" and body["status"] == "queued"
    assert [r["slide"] for r in body["runs"]] == [api_setup["slide"].pk]

    api_setup["slide"].status = Slide.Status.INVALID
    api_setup["slide"].save()
    response = api_setup["client"].post(f"{API}/predictions/{old.pk}/rerun/")
    assert response.status_code == 400 and "Could not re-run: These slides are not ready" in response.json()["slides"][0]


def test_results_of_a_prediction_still_running_are_partial_not_an_error(api_setup, pipeline_rows):
    prediction = make_prediction(api_setup["experiment"], pipeline_rows["ihc-dab"], api_setup["slide"], Status.RUNNING)
    results = api_setup["client"].get(f"{API}/predictions/{prediction.pk}/results/").json()
    assert results["status"] == "running" and results["slides"][0]["metrics"] is None
    assert results["slides"][0]["tile_table_url"] is None
    run = prediction.runs.get()
    assert api_setup["client"].get(f"{API}/predictions/{prediction.pk}/runs/{run.pk}/tiles.csv").status_code == 404
    csv_text = api_setup["client"].get(f"{API}/predictions/{prediction.pk}/results.csv").content.decode()
    assert csv_text.splitlines() == ["slide,slide_sha256,status,error", f"cmu.svs,{'ab' * 32},running,"]


# -- history: pagination and filters ---------------------------------------------------------------
def test_history_filters(api_setup, pipeline_rows, alice, django_user_model, lab_a):
    experiment, slide = api_setup["experiment"], api_setup["slide"]
    carol = django_user_model.objects.create_user("carol")
    lab_a.members.add(carol)
    other = Experiment.objects.create(name="Other", lab=lab_a)
    other_slide = ready_slide(other)
    a = make_prediction(experiment, pipeline_rows["ihc-dab"], slide, user=alice)
    b = make_prediction(experiment, pipeline_rows["tissue-area"], slide, Status.FAILED, user=carol)
    c = make_prediction(other, pipeline_rows["ihc-dab"], other_slide, Status.RUNNING, user=alice,
                        trigger=Prediction.Trigger.SCHEDULE, schedule_name="Nightly")
    Prediction.objects.filter(pk=a.pk).update(created_at=timezone.now() - timedelta(days=10))

    def ids(**query):
        response = api_setup["client"].get(f"{API}/predictions/", query)
        assert response.status_code == 200, response.content
        return [p["id"] for p in response.json()["results"]]

    assert ids() == [c.pk, b.pk, a.pk]
    assert ids(experiment=experiment.pk) == [b.pk, a.pk]
    assert ids(pipeline="ihc-dab") == [c.pk, a.pk]
    assert ids(status="failed") == [b.pk]
    assert ids(status=["failed", "running"]) == [c.pk, b.pk]
    assert ids(user=carol.pk) == [b.pk]
    assert ids(trigger="schedule") == [c.pk]
    assert ids(schedule="Nightly") == [c.pk]
    today = timezone.localdate()
    assert ids(date_from=str(today - timedelta(days=1))) == [c.pk, b.pk]
    assert ids(date_to=str(today - timedelta(days=5))) == [a.pk]
    assert ids(date_from=str(today - timedelta(days=11)), date_to=str(today)) == [c.pk, b.pk, a.pk]
    assert ids(page_size=1) == [c.pk]
    listed = api_setup["client"].get(f"{API}/predictions/", {"schedule": "Nightly"}).json()["results"][0]
    assert listed["trigger"] == "schedule" and listed["schedule_name"] == "Nightly"

    bad = api_setup["client"].get(f"{API}/predictions/", {"status": "bogus", "date_from": "yesterday"})
    assert bad.status_code == 400
    assert set(bad.json()) == {"status", "date_from"}


# -- pipelines and models --------------------------------------------------------------------------
def test_pipelines_with_their_parameter_schemas(api_setup):
    from predictions.catalogue import register_demo_model

    demo_model = register_demo_model()
    client = api_setup["client"]
    pipelines = {p["name"]: p for p in client.get(f"{API}/pipelines/").json()["results"]}
    # The built-ins, and any lab package installed beside them (make install-test adds the example).
    assert {"tissue-area", "ihc-dab", "nuclei-density", "tissue-classifier"} <= set(pipelines)
    ihc = pipelines["ihc-dab"]
    assert ihc["current"] is True and ihc["batch_queue"] == "cpu"
    tile = ihc["params_schema"]["properties"]["tile_size"]
    assert tile == {"type": "integer", "title": "Tile size (px)", "description": tile["description"],
                    "default": 512, "minimum": 64, "maximum": 2048}
    assert ihc["params_schema"]["additionalProperties"] is False
    classifier = pipelines["tissue-classifier"]
    assert classifier["batch_queue"] == "gpu" and classifier["model"]["sha256"] == demo_model.sha256

    models = client.get(f"{API}/models/").json()["results"]
    assert [(m["name"], m["sha256"]) for m in models] == [(demo_model.name, demo_model.sha256)]
    assert client.post(f"{API}/models/", {}, format="json").status_code == 405
    assert client.get(f"{API}/pipelines/999999/").status_code == 404


# -- the queue ---------------------------------------------------------------------------------------
def test_queue_order_positions_and_eta(api_setup, pipeline_rows, alice, bob, lab_b):
    experiment, slide = api_setup["experiment"], api_setup["slide"]
    running = make_prediction(experiment, pipeline_rows["ihc-dab"], slide, Status.RUNNING, started_at=timezone.now())
    first = make_prediction(experiment, pipeline_rows["ihc-dab"], slide, Status.QUEUED)
    bobs_exp = Experiment.objects.create(name="Bob's", lab=lab_b)
    bobs = make_prediction(bobs_exp, pipeline_rows["ihc-dab"], ready_slide(bobs_exp), Status.QUEUED,
                           priority=Prediction.Priority.URGENT)
    urgent = make_prediction(experiment, pipeline_rows["ihc-dab"], slide, Status.QUEUED,
                             priority=Prediction.Priority.URGENT)
    make_prediction(experiment, pipeline_rows["ihc-dab"], slide)  # finished: not in the queue

    body = api_setup["client"].get(f"{API}/queue/").json()
    order = [(e["prediction"]["id"], e["position"]) for e in body["results"]]
    # Bob's urgent one is ahead of Alice's (position 1) but not shown to her.
    assert order == [(running.pk, 0), (urgent.pk, 2), (first.pk, 3)]
    etas = [e["eta_seconds"] for e in body["results"]]
    assert etas[0] < etas[1] < etas[2]
    assert all(e["estimated_without_history"] for e in body["results"])
    assert "no history" in body["results"][0]["throughput"]["note"]
    assert [e["prediction"].pk for e in queueing.waiting(bob)] == [bobs.pk]
    # Paged like every list; positions stay those of the whole queue.
    first_page = api_setup["client"].get(f"{API}/queue/", {"page_size": 2}).json()
    assert first_page["count"] == 3 and len(first_page["results"]) == 2 and first_page["next"]
    second_page = api_setup["client"].get(first_page["next"]).json()
    assert [(e["prediction"]["id"], e["position"]) for e in second_page["results"]] == [(first.pk, 3)]

    detail = api_setup["client"].get(f"{API}/predictions/{first.pk}/").json()
    assert detail["queue_position"] == 3 and detail["eta_seconds"] == etas[2]


def test_the_queue_reads_a_page_in_the_same_queries_however_many_people_submitted(api_setup, pipeline_rows,
                                                                                   alice):
    """Each entry shows who submitted it and with which model: read with the page, not one
    query per entry."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.factories import MemberFactory

    experiment, slide = api_setup["experiment"], api_setup["slide"]

    def page_queries(submitters):
        for user in submitters:
            make_prediction(experiment, pipeline_rows["ihc-dab"], slide, Status.QUEUED, user=user)
        api_setup["client"].get(f"{API}/queue/")   # the plan placed, the rates measured
        with CaptureQueriesContext(connection) as captured:
            body = api_setup["client"].get(f"{API}/queue/").json()
        assert {e["prediction"]["triggered_by"] for e in body["results"]} >= {u.username for u in submitters}
        return len(captured)

    one = page_queries([alice])
    assert page_queries([MemberFactory(lab=experiment.lab) for _ in range(5)]) == one


def test_throughput_is_measured_from_earlier_batches(api_setup, pipeline_rows):
    from django.core.cache import cache

    done = make_prediction(api_setup["experiment"], pipeline_rows["nuclei-density"], api_setup["slide"])
    run = done.runs.get()
    now = timezone.now()
    for index in range(4):
        BatchResult.objects.create(run=run, index=index, rows=[], tiles=16, queue="cpu", started_at=now,
                                   finished_at=now, seconds=2.0)
    cache.clear()
    measured = queueing.throughput(pipeline_rows["nuclei-density"])
    assert measured.tiles_per_second == pytest.approx(8.0)
    assert not measured.no_history and measured.batches_measured == 4
    assert queueing.throughput("tissue-area").no_history


def test_a_slow_host_beside_a_fast_one_gives_the_queue_its_true_rate(api_setup, pipeline_rows):
    """ETAs stay honest with hosts of different speeds: over the same 20 s, a fast process does
    ten 2-second batches and a slow one (a fifth of the speed) two 10-second ones. The queue did
    192 tiles in 20 s; an average of each batch's own speed would say 13.9 tiles/s, not 9.6."""
    from django.core.cache import cache

    done = make_prediction(api_setup["experiment"], pipeline_rows["nuclei-density"], api_setup["slide"])
    run = done.runs.get()
    now = timezone.now()
    for index, seconds in enumerate([2.0] * 10 + [10.0] * 2):
        BatchResult.objects.create(run=run, index=index, rows=[], tiles=16, queue="cpu", started_at=now,
                                   finished_at=now, seconds=seconds)
    cache.clear()
    processes = 2
    measured = queueing.throughput(pipeline_rows["nuclei-density"])
    assert measured.tiles_per_second * processes == pytest.approx(192 / 20)
