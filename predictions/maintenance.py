"""Built-in maintenance, run by beat (the PeriodicTasks installed by migration 0003):

- expire_task_results: delete old Celery task results (predictions keep their own records);
- sweep_stuck: a running prediction that has not moved for STUCK_PREDICTION_MINUTES, and none
  of whose work is waiting in a queue or running on a live worker, has its missing work sent
  again (prepare, the missing tile batches, or aggregate, under the engine's deterministic task
  ids); after STUCK_PREDICTION_MAX_REQUEUES such attempts without progress its unfinished
  slides fail with a reason;
- resend_queued: a prediction still queued whose start message never reached the broker (no
  task row, see engine.send_start) or was lost, is sent again; so is a step the dispatcher
  counted as sent that never reached the broker (dispatch.send_unsent).

All of it is safe to run twice or concurrently with the work itself: every step it sends is
idempotent (engine.py), so a message sent again that turns out not to be lost costs a no-op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from celery import current_app, states
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from . import dispatch, engine, monitoring
from .models import BatchResult, Prediction, SlideRun, Status
from .pipelines import Plan

log = logging.getLogger(__name__)

_ASK = object()   # "ask the workers / the broker" (tests pass their own answers)


# -- expire task results --------------------------------------------------------------------------
def expire_task_results(days: int | None = None, now=None) -> int:
    """Delete finished task results older than `days` (TASK_RESULT_EXPIRE_DAYS); returns how many.

    Rows of tasks not finished yet (queued, running) are kept whatever their age: the sweeps
    below read them.
    """
    from django_celery_results.models import TaskResult

    days = settings.TASK_RESULT_EXPIRE_DAYS if days is None else days
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, _ = TaskResult.objects.filter(status__in=states.READY_STATES, date_done__lt=cutoff).delete()
    return deleted


# -- stuck predictions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Work:
    """One step of a slide run that has not happened: what to send to make it happen."""

    kind: str          # prepare | batch | aggregate
    run: SlideRun
    task_name: str
    args: tuple
    task_id: str
    queue: str


def outstanding_work(prediction: Prediction) -> list[Work]:
    """The steps of the prediction's running slides that were sent and have not finished yet.

    Batches the dispatcher has not sent yet are not outstanding: they wait for their turn
    (predictions/dispatch.py), and sending them here would jump the queue.
    """
    work = []
    code = prediction.pipeline.code
    for run in prediction.runs.filter(status=Status.RUNNING).order_by("pk"):
        if run.plan is None:
            work.append(Work("prepare", run, "predictions.cpu.prepare_slide", (run.pk,),
                             engine.prepare_task_id(run), "cpu"))
            continue
        count = run.batch_count if run.batch_count is not None else len(Plan.from_json(run.plan).batches())
        # A slide prepared before the dispatcher counted its batches had them all sent at once.
        sent = run.batches_sent if run.batch_count is not None else count
        done = set(run.batches.values_list("index", flat=True))
        missing = [i for i in range(sent) if i not in done]
        for index in missing:
            work.append(Work("batch", run, f"predictions.{code.batch_queue}.tile_batch", (run.pk, index),
                             engine.batch_task_id(run, index), code.batch_queue))
        if not missing and sent >= count:
            work.append(Work("aggregate", run, "predictions.cpu.aggregate_slide", (run.pk,),
                             engine.aggregate_task_id(run), "cpu"))
    return work


def last_progress(prediction: Prediction):
    """When the prediction last moved: started, a slide started or ended, a batch finished."""
    runs = SlideRun.objects.filter(prediction=prediction).aggregate(s=Max("started_at"), f=Max("finished_at"))
    batch = BatchResult.objects.filter(run__prediction=prediction).aggregate(f=Max("finished_at"))["f"]
    moments = [m for m in (prediction.started_at, runs["s"], runs["f"], batch) if m]
    return max(moments) if moments else prediction.created_at


def sweep_stuck(*, now=None, stale_after: timedelta | None = None, max_requeues: int | None = None,
                active_ids=_ASK, depths=None) -> dict:
    """Requeue the missing work of stuck running predictions, or fail them after enough tries.

    Returns {"requeued": {prediction id: [task ids]}, "failed": [ids], "waiting": [ids]}.
    """
    from django_celery_results.models import TaskResult

    now = now or timezone.now()
    stale_after = stale_after if stale_after is not None else timedelta(minutes=settings.STUCK_PREDICTION_MINUTES)
    max_requeues = settings.STUCK_PREDICTION_MAX_REQUEUES if max_requeues is None else max_requeues
    summary = {"requeued": {}, "failed": [], "waiting": []}
    running = list(Prediction.objects.filter(status=Status.RUNNING).select_related("pipeline"))
    if not running:
        return summary
    # No task can legitimately run longer than the hard time limit: past it, "running" means a
    # message that kills its worker on every delivery, and it is treated as stuck too.
    longest_task = timedelta(seconds=current_app.conf.task_time_limit or 0)
    for prediction in running:
        moved = last_progress(prediction)
        if moved >= now - stale_after:
            if prediction.stall_requeues:
                Prediction.objects.filter(pk=prediction.pk).update(stall_requeues=0)
            continue
        engine.advance(prediction.pk)   # a lost advance: slides left to start, or all of them done
        prediction.refresh_from_db()
        if prediction.status != Status.RUNNING:
            continue
        work = outstanding_work(prediction)
        if not work:
            continue
        if active_ids is _ASK:
            active_ids = monitoring.active_task_ids(use_cache=False) or set()
        if now - moved < stale_after + longest_task:
            # A step running on a live worker right now is not lost; the others may be (a worker
            # killed after the last progress, while the dispatcher filled its freed slot).
            work = [w for w in work if w.task_id not in active_ids]
            if not work:
                continue
        ids = [w.task_id for w in work]
        if depths is None:
            depths = monitoring.queue_depths(use_cache=False)
        pending = set(TaskResult.objects.filter(task_id__in=ids, status=states.PENDING)
                      .values_list("task_id", flat=True))
        if any(w.task_id in pending and depths.get(w.queue) != 0 for w in work):
            # Sent and not taken yet, and its queue is not empty (or cannot be measured): it is
            # waiting behind other work, not lost.
            summary["waiting"].append(prediction.pk)
            continue
        if prediction.stall_requeues >= max_requeues:
            _fail(prediction, moved, now, max_requeues)
            summary["failed"].append(prediction.pk)
            continue
        _resend(prediction, work)
        Prediction.objects.filter(pk=prediction.pk).update(stall_requeues=prediction.stall_requeues + 1)
        summary["requeued"][prediction.pk] = ids
        log.warning("prediction %s made no progress since %s; sent again: %s", prediction.pk, moved, ", ".join(ids))
    return summary


def _resend(prediction: Prediction, work: list[Work]) -> None:
    from django_celery_results.models import TaskResult

    # The old rows (a dead worker's STARTED, a lost PENDING) go, so the rows written as the new
    # messages are sent say "queued" again.
    TaskResult.objects.filter(task_id__in=[w.task_id for w in work]).delete()
    aggregates = [w.run.pk for w in work if w.kind == "aggregate"]
    if aggregates:
        SlideRun.objects.filter(pk__in=aggregates).update(aggregate_dispatched=True)
    with transaction.atomic():
        for w in work:
            engine._send_after_commit(w.task_name, prediction, list(w.args), task_id=w.task_id)


def _fail(prediction: Prediction, moved, now, attempts: int) -> None:
    minutes = max(1, round((now - moved).total_seconds() / 60))
    reason = (f"No progress for {minutes} minutes, and sending its unfinished work again {attempts} time(s) "
              "did not help: the worker running it may have stopped or crashed (see the worker logs). "
              "Re-run the prediction once the workers are healthy.")
    log.error("prediction %s is stuck; failing its unfinished slides", prediction.pk)
    for run in prediction.runs.filter(status=Status.RUNNING):
        engine.fail_run(run, reason)


# -- queued predictions whose start message was lost ----------------------------------------------
def resend_queued(*, now=None, older_than: timedelta | None = None, stale_after: timedelta | None = None,
                  active_ids=_ASK, depths=None) -> list[int]:
    """Send the start message again for queued predictions whose message never got through,
    then let the dispatcher fill the queues (work it could not send while the broker was away).

    Sent again when, older than `older_than` (QUEUED_RESEND_AFTER_SECONDS): there is no task row
    for its start message (the broker was away at submit time); or, older than `stale_after`,
    the message is neither waiting in the cpu queue nor running (lost with a worker on a broker
    without acks). A start message that ran while the prediction stays queued is no loss: the
    prediction is waiting for its turn (predictions/dispatch.py).
    """
    from django_celery_results.models import TaskResult

    now = now or timezone.now()
    older_than = older_than if older_than is not None else timedelta(seconds=settings.QUEUED_RESEND_AFTER_SECONDS)
    stale_after = stale_after if stale_after is not None else timedelta(minutes=settings.STUCK_PREDICTION_MINUTES)
    resent = []
    for prediction in Prediction.objects.filter(status=Status.QUEUED, created_at__lt=now - older_than):
        task_id = engine.start_task_id(prediction)
        row = TaskResult.objects.filter(task_id=task_id).first()
        lost = row is None
        if not lost and row.status not in states.READY_STATES and prediction.created_at < now - stale_after:
            if depths is None:
                depths = monitoring.queue_depths(use_cache=False)
            if active_ids is _ASK:
                active_ids = monitoring.active_task_ids(use_cache=False) or set()
            lost = depths.get("cpu") == 0 and task_id not in active_ids
        if not lost:
            continue
        TaskResult.objects.filter(task_id=task_id).delete()
        with transaction.atomic():
            engine.send_start(prediction)
        resent.append(prediction.pk)
        log.warning("prediction %s was still queued with its start message lost; sent again", prediction.pk)
    try:
        dispatch.send_unsent()
    except Exception:  # noqa: BLE001  (the broker away: the next minute tries again)
        log.warning("could not send the steps counted as sent", exc_info=True)
    dispatch.dispatch_all()
    return resent
