"""Built-in maintenance: installed by a migration, expiring old task results, the stuck-prediction
sweep (requeue the missing work of a prediction whose worker disappeared, or fail it with a
reason), and re-sending predictions left queued because the broker was away at submit time."""

import os
import signal
import time
from datetime import timedelta

import pytest
from celery import states
from django.utils import timezone
from django_celery_results.models import TaskResult

from histoia.celery import app
from predictions import dispatch, engine, maintenance
from predictions.models import BatchResult, Prediction, SlideRun, Status
from predictions.pipelines import Plan
from predictions.tasks import expire_task_results, sweep_stuck_predictions
from tests.conftest import CMU_SLIDE, token_client, wait_final, wait_for
from tests.factories import PredictionFactory, SlideFactory, SlideRunFactory

MAINTENANCE = {
    "Histo-IA: expire old task results": "predictions.cpu.expire_task_results",
    "Histo-IA: requeue or fail stuck predictions": "predictions.cpu.sweep_stuck_predictions",
    "Histo-IA: re-send queued predictions": "predictions.cpu.resend_queued_predictions",
}


def test_maintenance_schedules_are_installed_by_the_migration_and_shown_in_the_admin(admin_client):
    from django_celery_beat.models import PeriodicTask

    installed = {t.name: t for t in PeriodicTask.objects.filter(name__in=MAINTENANCE)}
    assert {name: t.task for name, t in installed.items()} == MAINTENANCE
    assert all(t.enabled and t.description for t in installed.values())
    assert installed["Histo-IA: expire old task results"].crontab is not None
    assert installed["Histo-IA: requeue or fail stuck predictions"].interval.every == 5
    app.loader.import_default_modules()
    assert set(MAINTENANCE.values()) <= set(app.tasks)
    # Routed by name to the cpu queue like every other task.
    assert all(app.amqp.router.route({}, name)["queue"].name == "cpu" for name in MAINTENANCE.values())
    assert not PeriodicTask.objects.filter(task="celery.backend_cleanup").exists()

    page = admin_client.get("/admin/django_celery_beat/periodictask/").content.decode()
    assert all(name in page for name in MAINTENANCE)


def test_expire_task_results_keeps_recent_and_unfinished_ones(db, settings):
    settings.TASK_RESULT_EXPIRE_DAYS = 30
    old = timezone.now() - timedelta(days=31)
    for task_id, status, when in [("old-ok", states.SUCCESS, old), ("old-failed", states.FAILURE, old),
                                  ("old-queued", states.PENDING, old), ("new-ok", states.SUCCESS, timezone.now())]:
        TaskResult.objects.create(task_id=task_id, status=status)
        TaskResult.objects.filter(task_id=task_id).update(date_done=when)
    assert expire_task_results.apply().get() == 2
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == {"old-queued", "new-ok"}


# -- the stuck sweep, in process ------------------------------------------------------------------------
PLAN = Plan(mpp=0.5, analysis_downsample=1.0, tile_size=128, mask_downsample=16.0, mask_shape=(8, 8),
            grid_shape=(2, 2), tiles=[(0, 0), (0, 1), (1, 0)], tile_tissue=[1.0, 1.0, 1.0], batch_size=2)


@pytest.fixture
def stuck(db, experiment):
    """A running prediction that stopped moving an hour ago: slide 1 has batch 0 of 2, slide 2
    has no plan (its prepare was lost), slide 3 has every batch but no aggregate."""
    hour_ago = timezone.now() - timedelta(hours=1)
    prediction = PredictionFactory(experiment=experiment, pipeline_name="ihc-dab", status=Status.RUNNING,
                                   started_at=hour_ago)
    runs = []
    for i in range(3):
        slide = SlideFactory(experiment=experiment, original_name=f"s{i}.svs")
        runs.append(SlideRunFactory(prediction=prediction, slide=slide, started_at=hour_ago,
                                    plan=None if i == 1 else PLAN.to_json(), total_units=5, done_units=1,
                                    aggregate_dispatched=i == 2))
    for run, indices in ((runs[0], [0]), (runs[2], [0, 1])):
        for index in indices:
            BatchResult.objects.create(run=run, index=index, rows=[{}], tiles=1, queue="cpu", started_at=hour_ago,
                                       finished_at=hour_ago, seconds=1.0)
    # The dead worker's rows: the batch it was running, the aggregate it had taken.
    TaskResult.objects.create(task_id=engine.batch_task_id(runs[0], 1), status=states.STARTED)
    TaskResult.objects.create(task_id=engine.aggregate_task_id(runs[2]), status=states.PENDING)
    return prediction, runs


def idle(**kwargs):
    return maintenance.sweep_stuck(stale_after=timedelta(minutes=15), active_ids=set(),
                                   depths={"cpu": 0, "gpu": 0}, **kwargs)


def test_sweep_requeues_exactly_the_missing_steps(stuck):
    prediction, runs = stuck
    summary = idle()
    assert summary["requeued"] == {prediction.pk: [
        engine.batch_task_id(runs[0], 1), engine.prepare_task_id(runs[1]), engine.aggregate_task_id(runs[2])]}
    prediction.refresh_from_db()
    assert prediction.status == Status.RUNNING and prediction.stall_requeues == 1
    # The dead worker's STARTED row is gone: the re-sent task is queued again, not "running".
    assert not TaskResult.objects.filter(task_id=engine.batch_task_id(runs[0], 1)).exists()


def test_sweep_fails_a_prediction_that_never_moves_again(stuck, settings):
    prediction, runs = stuck
    settings.STUCK_PREDICTION_MAX_REQUEUES = 2
    assert idle()["requeued"] and idle()["requeued"]
    assert idle()["failed"] == [prediction.pk]
    prediction.refresh_from_db()
    assert prediction.status == Status.FAILED and prediction.finished_at is not None
    for run in prediction.runs.all():
        assert run.status == Status.FAILED
        assert "No progress for 60 minutes" in run.error and "2 time(s)" in run.error
    assert "Every slide failed" in prediction.error


def test_sweep_leaves_alone_what_is_moving_running_or_waiting(stuck):
    prediction, runs = stuck
    # Recent progress: not stuck, and the requeue count starts again.
    Prediction.objects.filter(pk=prediction.pk).update(stall_requeues=2)
    BatchResult.objects.filter(run=runs[0]).update(finished_at=timezone.now())
    assert idle() == {"requeued": {}, "failed": [], "waiting": []}
    prediction.refresh_from_db()
    assert prediction.stall_requeues == 0
    BatchResult.objects.filter(run=runs[0]).update(finished_at=timezone.now() - timedelta(minutes=20))

    # Its steps are running on a live worker right now (long ones, under the time limit).
    busy = {engine.batch_task_id(runs[0], 1), engine.prepare_task_id(runs[1]), engine.aggregate_task_id(runs[2])}
    running = maintenance.sweep_stuck(stale_after=timedelta(minutes=15), depths={"cpu": 0, "gpu": 0},
                                      active_ids=busy)
    assert running == {"requeued": {}, "failed": [], "waiting": []}
    # ...but no task runs longer than the hard time limit: "running" for an hour is a message that
    # kills its worker at every delivery, and that is stuck.
    BatchResult.objects.filter(run=runs[0]).update(finished_at=timezone.now() - timedelta(hours=1))
    looping = maintenance.sweep_stuck(stale_after=timedelta(minutes=15), depths={"cpu": 0, "gpu": 0},
                                      active_ids=busy)
    assert list(looping["requeued"]) == [prediction.pk]
    Prediction.objects.filter(pk=prediction.pk).update(stall_requeues=0)
    TaskResult.objects.create(task_id=engine.aggregate_task_id(runs[2]), status=states.PENDING)

    # Its messages are queued behind other work: waiting, not lost.
    waiting = maintenance.sweep_stuck(stale_after=timedelta(minutes=15), active_ids=set(), depths={"cpu": 12})
    assert waiting["waiting"] == [prediction.pk] and not waiting["requeued"]
    prediction.refresh_from_db()
    assert prediction.stall_requeues == 0 and prediction.status == Status.RUNNING


def test_sweep_sends_again_the_lost_steps_beside_one_still_running(stuck):
    """A worker killed mid-prediction while the dispatcher gave its freed slot to the next batch,
    now running on a live worker: that one is left alone, the lost ones are sent again."""
    prediction, runs = stuck
    BatchResult.objects.filter(run=runs[0]).update(finished_at=timezone.now() - timedelta(minutes=20))
    busy = {engine.prepare_task_id(runs[1])}
    summary = maintenance.sweep_stuck(stale_after=timedelta(minutes=15), depths={"cpu": 0, "gpu": 0},
                                      active_ids=busy)
    assert summary["requeued"] == {prediction.pk: [engine.batch_task_id(runs[0], 1),
                                                   engine.aggregate_task_id(runs[2])]}


def test_a_starting_worker_sends_a_step_recorded_a_moment_ago_and_never_sent(pipeline_rows, experiment, monkeypatch,
                                                                             django_capture_on_commit_callbacks):
    """A worker killed between a dispatch's commit and its publish, and restarted at once."""
    slide = SlideFactory(experiment=experiment, source=None, status="ready", width=2220, height=2967)
    sent = []
    monkeypatch.setattr(engine, "send_start", lambda prediction: None)
    prediction = engine.submit(experiment, pipeline_rows["ihc-dab"], [slide])
    monkeypatch.setattr(engine, "publish", lambda name, args, **kwargs: None)   # dies before it publishes
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.dispatch_all()
    run = prediction.runs.get()
    assert run.status == Status.RUNNING and run.batch_count is None   # the prepare, recorded
    monkeypatch.setattr(engine, "publish", lambda name, args, **kwargs: sent.append((name, args)))
    dispatch._worker_ready()
    assert sent == [("predictions.cpu.prepare_slide", [run.pk])]


def test_sweep_finishes_a_prediction_whose_last_advance_was_lost(stuck):
    prediction, runs = stuck
    SlideRun.objects.filter(prediction=prediction).update(status=Status.SUCCEEDED, metrics={})
    idle()
    prediction.refresh_from_db()
    assert prediction.status == Status.SUCCEEDED


# -- with real workers ----------------------------------------------------------------------------------
MANY_BATCHES = {"tile_size": 128}


@pytest.mark.worker
def test_sweep_requeues_the_work_of_a_prediction_whose_worker_disappeared(workers, pipelines, make_slide):
    slide = make_slide(CMU_SLIDE)
    prediction = engine.submit(slide.experiment, pipelines["nuclei-density"], [slide], MANY_BATCHES)
    run = wait_for(lambda: SlideRun.objects.filter(prediction=prediction, plan__isnull=False).first(),
                   message="the slide to be prepared")
    total = len(Plan.from_json(run.plan).batches())
    # Mid-batch, the cpu worker dies (SIGKILL, with its pool) and the messages it held are lost
    # with it, along with those still queued (a broker restarted without them). The worker is
    # frozen first, so that "mid-batch" is checked, not hoped for: a batch that ended just
    # before the kill would leave nothing lost on a loaded machine.
    def frozen_mid_batch():
        wait_for(lambda: TaskResult.objects.filter(task_id__startswith=f"p{prediction.pk}-r",
                                                   status=states.STARTED).exists(), message="a batch to start")
        os.killpg(workers.procs["cpu"].pid, signal.SIGSTOP)
        run.refresh_from_db()
        if set(range(run.batches_sent)) - set(run.batches.values_list("index", flat=True)):
            return True
        os.killpg(workers.procs["cpu"].pid, signal.SIGCONT)
        return False

    wait_for(frozen_mid_batch, timeout=120, message="the cpu worker frozen with a batch unfinished")
    workers.kill("cpu")
    # RabbitMQ puts the dead worker's unacknowledged messages back, not always at once: purge
    # until two purges in a row find nothing, so the restarted worker cannot take one of them.
    empty = 0
    for _ in range(15):
        time.sleep(1)
        empty = empty + 1 if not app.control.purge() else 0
        if empty == 2:
            break
    run.refresh_from_db()
    prediction.refresh_from_db()
    done = set(run.batches.values_list("index", flat=True))
    lost = {engine.batch_task_id(run, i) for i in range(run.batches_sent) if i not in done}
    assert lost and prediction.status == Status.RUNNING, "some batches must be lost"
    # A new worker starts; the lost batches still hold their places in the window.
    workers.start("cpu")
    time.sleep(2)

    # The scheduled task, as beat runs it, with "stuck" meaning "no progress for 1 second". Beat
    # runs it again and again: a run may find the prediction's steps still waiting in a queue
    # that is not empty yet (the restarted worker settling), and the next one sends them.
    from django.test import override_settings

    # RabbitMQ may still hand a dead worker's message back after the purges above: a batch run
    # so by the new worker is not lost any more, and the sweep rightly leaves it alone.
    def redelivered():
        return {engine.batch_task_id(run, i) for i in run.batches.values_list("index", flat=True)} - requeued

    requeued: set[str] = set()
    deadline = time.monotonic() + 60
    with override_settings(STUCK_PREDICTION_MINUTES=0, STUCK_PREDICTION_MAX_REQUEUES=10):
        while not lost <= requeued | redelivered() and time.monotonic() < deadline:
            time.sleep(1)
            summary = sweep_stuck_predictions.apply().get()
            requeued |= set(summary["requeued"].get(str(prediction.pk), []))
    # What was sent and lost is sent again (and at most the prediction's other unfinished steps,
    # a batch the new worker holds and has not started yet); the batches not sent yet wait for
    # their turn in the dispatcher's window (predictions/dispatch.py), as they would have anyway.
    run.refresh_from_db()
    assert lost & requeued, "the sweep sent lost batches again"
    assert lost <= requeued | redelivered()
    assert requeued <= {engine.batch_task_id(run, i) for i in range(run.batches_sent)}
    wait_final(prediction, timeout=240)
    assert prediction.status == Status.SUCCEEDED, prediction.error
    run.refresh_from_db()
    assert sorted(run.batches.values_list("index", flat=True)) == list(range(total))   # each batch once
    assert run.metrics["nuclei_count"] > 0 and prediction.done_units == prediction.total_units


@pytest.mark.worker
def test_a_prediction_left_queued_by_an_unreachable_broker_is_sent_again(workers, pipelines, make_slide, alice,
                                                                        monkeypatch):
    from kombu.exceptions import OperationalError

    slide = make_slide(CMU_SLIDE)
    client = token_client(alice)

    def unreachable(*args, **kwargs):
        raise OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr(app, "send_task", unreachable)
    response = client.post("/api/v1/predictions/", {"experiment": slide.experiment_id, "pipeline": "tissue-area"},
                           format="json")
    monkeypatch.undo()
    assert response.status_code == 202
    prediction = Prediction.objects.get(pk=response.json()["id"])
    time.sleep(2)
    prediction.refresh_from_db()
    assert prediction.status == Status.QUEUED   # nothing reached the workers

    # The periodic job, once the broker is back: the start message that never got through is
    # sent again, and the dispatcher sends the prediction's first steps.
    assert maintenance.resend_queued(older_than=timedelta(0)) == [prediction.pk]
    wait_final(prediction)
    assert prediction.status == Status.SUCCEEDED and prediction.runs.get().metrics["tissue_area_mm2"] > 0
    # Nothing is left to send.
    assert maintenance.resend_queued(older_than=timedelta(0)) == []
