"""The queue keeps its promise: predictions run in the order the dashboard shows, with real
workers (2 cpu processes) over the real broker.

Each prediction is a short ihc-dab run on the CMU slide cut into small tiles (several batches,
more than the workers can hold at once), so that running them all at once would share the
workers between them and end them together; run in order, each ends before the next.
"""

import time

import pytest

from predictions import engine, queueing
from predictions.models import Prediction, Status
from tests.conftest import CMU_SLIDE, wait_final, wait_for
from tests.factories import ExperimentFactory, MemberFactory

pytestmark = pytest.mark.worker

SMALL_TILES = {"tile_size": 128}


def submit(slide, pipeline, user, priority=Prediction.Priority.NORMAL):
    return engine.submit(slide.experiment, pipeline, [slide], SMALL_TILES, user=user, priority=priority)


def submit_losing_its_first_step(slide, pipeline, user, monkeypatch):
    """A submit whose dispatcher dies between its commit and its publish: the slide's prepare is
    counted as sent and never reaches the broker. (The workers being idle, the submit dispatches
    it itself; its start message is dropped too, so no worker dispatches anything else.)"""
    monkeypatch.setattr(engine, "send_start", lambda prediction: None)
    monkeypatch.setattr(engine, "publish", lambda *args, **kwargs: None)   # recorded, never sent
    prediction = submit(slide, pipeline, user)
    monkeypatch.undo()
    return prediction


def shown_order(*predictions):
    """The dashboard's order of these predictions, as shown now."""
    wanted = {p.pk for p in predictions}
    return [e["pk"] for e in queueing.waiting(load=False) if e["pk"] in wanted]


def finished(*predictions):
    for prediction in predictions:
        wait_final(prediction, timeout=240)
        assert prediction.status == Status.SUCCEEDED, prediction.error
    return predictions


def test_predictions_submitted_back_to_back_end_in_submit_order(workers, pipelines, make_slide, alice):
    slide = make_slide(CMU_SLIDE)
    submitted = [submit(slide, pipelines["ihc-dab"], alice) for _ in range(4)]
    assert shown_order(*submitted) == [p.pk for p in submitted]
    finished(*submitted)
    ends = [p.finished_at for p in submitted]
    assert ends == sorted(ends), "predictions must end in the order they were submitted"
    # In order, not shared: the third starts only once the first has ended (the window holds a
    # step or two of the next prediction, never the whole queue).
    for earlier, later in zip(submitted, submitted[2:]):
        assert later.started_at >= earlier.finished_at


def test_urgent_overtakes_waiting_work_but_not_started_work(workers, pipelines, make_slide, alice):
    slide = make_slide(CMU_SLIDE)
    normal = [submit(slide, pipelines["ihc-dab"], alice) for _ in range(3)]
    # The workers being idle, the first one's submit started it: nothing submitted after it can
    # come first (its ETA said "now").
    assert Prediction.objects.get(pk=normal[0].pk).status == Status.RUNNING
    slide.experiment.lab.managers.add(alice)   # urgent is a lab manager's call
    urgent = submit(slide, pipelines["ihc-dab"], alice, priority=Prediction.Priority.URGENT)
    shown = shown_order(*normal, urgent)
    assert shown.index(urgent.pk) < shown.index(normal[2].pk)
    finished(*normal, urgent)
    assert normal[0].finished_at < urgent.finished_at       # started first, finished first
    assert urgent.finished_at < normal[2].finished_at        # ahead of the waiting ones
    assert urgent.started_at < normal[2].started_at


def test_two_labs_take_turns(workers, pipelines, make_slide, alice, lab_b):
    slide_a = make_slide(CMU_SLIDE)
    member_b = MemberFactory(lab=lab_b)
    experiment_b = ExperimentFactory(lab=lab_b, created_by=member_b)
    slide_b = make_slide(CMU_SLIDE, exp=experiment_b)
    lab_a_runs = [submit(slide_a, pipelines["ihc-dab"], alice) for _ in range(4)]
    lab_b_run = submit(slide_b, pipelines["ihc-dab"], member_b)
    # Lab B's one prediction runs in the next round, not after all of lab A's.
    shown = shown_order(*lab_a_runs, lab_b_run)
    assert shown.index(lab_b_run.pk) <= 2, shown
    finished(*lab_a_runs, lab_b_run)
    started = [p.pk for p in sorted([*lab_a_runs, lab_b_run], key=lambda p: p.started_at)]
    assert started.index(lab_b_run.pk) <= 2, started
    assert lab_b_run.finished_at < lab_a_runs[3].finished_at


def test_a_cancelled_prediction_frees_its_place_at_once(workers, pipelines, make_slide, alice):
    slide = make_slide(CMU_SLIDE)
    first, second = submit(slide, pipelines["ihc-dab"], alice), submit(slide, pipelines["ihc-dab"], alice)
    engine.cancel(Prediction.objects.get(pk=first.pk), alice)
    cancelled_at = time.monotonic()
    second.refresh_from_db()
    # The dispatcher gave the place to the next one in the cancel itself, not at some later step.
    while second.status == Status.QUEUED and time.monotonic() - cancelled_at < 5:
        time.sleep(0.1)
        second.refresh_from_db()
    assert second.status == Status.RUNNING
    finished(second)


def test_order_holds_after_a_worker_is_killed_mid_queue(workers, pipelines, make_slide, alice):
    slide = make_slide(CMU_SLIDE)
    submitted = [submit(slide, pipelines["ihc-dab"], alice) for _ in range(3)]
    # The cpu worker dies with its pool mid-way through the first prediction; RabbitMQ gives its
    # unacknowledged messages back, and a new worker takes them.
    from tests.conftest import wait_for

    wait_for(lambda: submitted[0].runs.filter(batches__isnull=False).exists(), message="a first batch")
    workers.kill("cpu")
    workers.start("cpu")
    finished(*submitted)
    ends = [p.finished_at for p in submitted]
    assert ends == sorted(ends)
    assert submitted[2].started_at >= submitted[0].finished_at


def test_a_step_counted_as_sent_but_never_sent_is_sent_by_the_minute_check(workers, pipelines, make_slide, alice,
                                                                          monkeypatch):
    """A dispatcher that dies between its commit and its publish leaves a step in the window
    that no worker will run; the every-minute maintenance finds it (no task row) and sends it."""
    from datetime import timedelta

    from django.utils import timezone

    from predictions import maintenance

    slide = make_slide(CMU_SLIDE)
    prediction = submit_losing_its_first_step(slide, pipelines["ihc-dab"], alice, monkeypatch)
    run = prediction.runs.get()
    assert run.status == Status.RUNNING and run.dispatched_at is not None   # counted as sent
    time.sleep(3)
    run.refresh_from_db()
    assert run.batch_count is None, "the prepare never reached a worker"
    # Fresh records are left alone (the publish may be a moment behind its commit)...
    maintenance.resend_queued()
    run.refresh_from_db()
    assert run.batch_count is None
    # ...a minute later the step is sent again, and the prediction runs to its end.
    type(run).objects.filter(pk=run.pk).update(dispatched_at=timezone.now() - timedelta(minutes=2))
    maintenance.resend_queued()
    finished(prediction)


def test_a_worker_restarted_after_dying_between_commit_and_publish_sends_what_it_left(workers, pipelines,
                                                                                     make_slide, alice,
                                                                                     monkeypatch):
    """The same loss, recovered without beat: a worker killed mid-dispatch is restarted, and as
    it starts it sends the steps recorded that have no task row."""
    slide = make_slide(CMU_SLIDE)
    prediction = submit_losing_its_first_step(slide, pipelines["ihc-dab"], alice, monkeypatch)
    time.sleep(3)
    run = prediction.runs.get()
    assert run.status == Status.RUNNING and run.batch_count is None, "the prepare never reached a worker"
    workers.kill("cpu")
    workers.start("cpu")
    finished(prediction)


def test_a_prediction_left_with_nothing_in_flight_is_refilled_by_the_minute_job(workers, pipelines, make_slide,
                                                                               alice, monkeypatch):
    """A worker killed after a batch's result was written and before it sent the next batches:
    nothing it was sent is lost, but nothing more is coming either (no step in flight, so no
    step's end dispatches). Beat's once-a-minute job, run by a worker as beat sends it, fills the
    window again, and the prediction ends with each batch done once."""
    from django_celery_results.models import TaskResult

    from predictions import dispatch
    from predictions.tasks import resend_queued_predictions

    slide = make_slide(CMU_SLIDE)
    with engine.inline_steps() as steps:   # the slide's steps run here, up to its first batches
        prediction = submit(slide, pipelines["ihc-dab"], alice)
        while not steps.pending[0][0].endswith(".tile_batch"):
            steps.run_next()
        monkeypatch.setattr(dispatch, "dispatch_all", lambda *args, **kwargs: None)   # dies before it
        steps.run()
        monkeypatch.undo()
    run = prediction.runs.get()
    done = run.batches.count()
    assert run.status == Status.RUNNING and 0 < done == run.batches_sent < run.batch_count
    time.sleep(3)   # live workers, and yet nothing moves: nothing is in flight to end and dispatch
    run.refresh_from_db()
    assert (run.batches.count(), run.batches_sent) == (done, done)

    job = resend_queued_predictions.delay()
    wait_for(lambda: TaskResult.objects.filter(task_id=job.id, status="SUCCESS").exists(), timeout=60,
             message="the minute job on the cpu worker")
    finished(prediction)
    batches = list(prediction.runs.get().batches.values_list("index", flat=True))
    assert sorted(batches) == list(range(run.batch_count))


def test_a_slide_whose_aggregate_was_claimed_and_never_sent_is_finished_by_a_restarted_worker(
        workers, pipelines, make_slide, alice):
    """A worker killed between claiming a slide's aggregate and sending it: the redelivered
    batch finds the claim taken and sends nothing, so only the recovery can end the slide."""
    slide = make_slide(CMU_SLIDE)
    with engine.inline_steps() as steps:   # the slide's steps run here, up to its aggregate
        prediction = submit(slide, pipelines["ihc-dab"], alice)
        while steps.pending[0][0] != "predictions.cpu.aggregate_slide":
            steps.run_next()
        steps.pending.clear()              # the aggregate's message dies with its worker
    run = prediction.runs.get()
    run.refresh_from_db()
    assert run.status == Status.RUNNING and run.aggregate_dispatched and run.batches.count() == run.batch_count
    time.sleep(1.5)
    workers.kill("cpu")
    workers.start("cpu")
    finished(prediction)
    assert prediction.runs.get().metrics["tissue_area_px"] > 0


def test_a_start_message_waits_behind_the_steps(workers, pipeline_rows, experiment, alice, settings):
    """A script that submits hundreds of predictions to busy workers must not hold back the
    running ones (bench/submit_burst.py): each submit's start message goes behind every step,
    even a step sent after it. (A submit to an idle queue has started its prediction itself.)"""
    from histoia.celery import app
    from predictions import dispatch
    from tests.factories import SlideFactory

    if not settings.CELERY_BROKER_IS_AMQP:
        pytest.skip("the filesystem broker has no message priorities")
    workers.kill("cpu")     # nothing takes the messages: they wait in the queue, in its order
    try:
        app.control.purge()
        slide = SlideFactory(experiment=experiment, source=None, status="ready", width=2220, height=2967,
                             sha256="ab" * 32)
        prediction = engine.submit(experiment, pipeline_rows["ihc-dab"], [slide], {}, user=alice)
        run = prediction.runs.get()
        # The idle queue: the submit sent its slide's prepare, then its start message. Then a
        # tile batch, as the dispatcher sends them for a running prediction.
        batch = dispatch.Step("batch", prediction.pk, run.pk, 0, "cpu")
        engine.publish(batch.task_name, batch.args, task_id=batch.task_id, priority=dispatch._priority(batch))
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            taken = []
            while (message := channel.basic_get("cpu", no_ack=True)) is not None:
                taken.append(message.headers["task"])
        assert taken == ["predictions.cpu.prepare_slide", "predictions.cpu.tile_batch",
                         "predictions.cpu.start_prediction"]
    finally:
        workers.start("cpu")
