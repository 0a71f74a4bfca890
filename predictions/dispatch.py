"""The dispatcher: work reaches the broker in the order the queue shows, a little at a time.

Why: if every prediction sent all its work at once, the workers would share themselves between
all of them (processor sharing): four predictions submitted together would all end together, at
four times the first one's time, and no ETA could come true. Instead the broker holds, per queue,
only a small window of work — as many steps as the queue's worker processes can run, plus
DISPATCH_AHEAD ready to start — and each time a step ends the window is refilled from the
predictions in run order (predictions/run_order.py): the first prediction's steps go first, the
next prediction's follow as soon as the first has nothing more to send. cpu and gpu are separate
windows: a gpu prediction waiting for the GPU does not hold back cpu work behind it.

A slide's steps are prepare (cpu), its tile batches (the pipeline's batch queue) and aggregate
(cpu). A slide's aggregate is not held back by the window and is sent at the highest priority:
a finished slide never waits behind other predictions' batches. A prepare is sent in the turn
of its pipeline's batch queue; for a gpu pipeline at the highest priority too, so that a gpu
prediction starts as soon as the GPU is free, whatever waits for the cpu workers.

What is "in the window" is counted from the database, never from the broker: prepare sent
(a running slide run without its batch count yet), batches sent but not finished
(SlideRun.batches_sent minus its BatchResult rows) and aggregates claimed. Dispatching takes a
row lock per queue (DispatchLock), so two dispatchers never fill the same slot. A message is sent
after the commit that records it; if the broker refuses it, the record is undone and the next
dispatch sends it again; if the dispatcher dies between the two, send_unsent() sends it when a
worker starts, or within a minute or two (beat). A redelivered message (a worker killed mid-task) is still counted, so a
crash changes neither the order nor the window.

Who dispatches: the web process after a submit to a queue with no step in flight
(start_if_idle: nothing can overtake a prediction whose answer said "starts now") and after a
cancel; a worker after each step; the worker taking a submit's start message (sent behind every
step: on a busy queue it is only a wake-up, and a burst of them must not hold the running work
back); and beat once a minute (with the re-send of queued predictions,
predictions/maintenance.py), which also sends again what a broker that was away refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from celery import signals
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Max, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from experiments.models import Experiment
from histoia.queues import CPU, MAX_PRIORITY, PRIORITY_NORMAL, QUEUE_NAMES

from .models import BatchResult, DispatchLock, Prediction, SlideRun, Status, WorkerSlots
from .run_order import Entry, run_order, turn_after

log = logging.getLogger(__name__)

# A worker that has not said it is alive for this long no longer counts towards the window.
WORKER_SILENT_AFTER = timedelta(minutes=3)
# Slides of one prediction being prepared at once (the next slide's prepare overlaps the
# previous slide's batches, so the workers never wait for a prepare).
PREPARING_PER_PREDICTION = 1


@dataclass(frozen=True)
class Step:
    """One message to send: a slide's prepare, or one of its tile batches."""

    kind: str           # "prepare" | "batch" | "aggregate" (claimed by engine, outside the window)
    prediction_id: int
    run_id: int
    index: int = 0      # the batch's index
    queue: str = CPU    # the window it is counted in: the pipeline's batch queue (a prepare runs on cpu)

    @property
    def task_name(self) -> str:
        if self.kind == "batch":
            return f"predictions.{self.queue}.tile_batch"
        return f"predictions.cpu.{self.kind}_slide"

    @property
    def args(self) -> list:
        return [self.run_id, self.index] if self.kind == "batch" else [self.run_id]

    @property
    def task_id(self) -> str:
        suffix = f"b{self.index}" if self.kind == "batch" else self.kind
        return f"p{self.prediction_id}-r{self.run_id}-{suffix}"


# -- capacity --------------------------------------------------------------------------------
def processes(queue: str) -> int:
    """Worker processes consuming `queue`, as live workers report them (WorkerSlots); the
    configured default when none has reported (e.g. workers that have only just started)."""
    since = timezone.now() - WORKER_SILENT_AFTER
    total = sum(w.processes for w in WorkerSlots.objects.filter(seen_at__gte=since) if queue in (w.queues or []))
    return total or settings.HISTOIA_DEFAULT_PROCESSES.get(queue, 1)


def window(queue: str) -> int:
    return processes(queue) + settings.HISTOIA_DISPATCH_AHEAD


def batches_done():
    """A run's tile batches finished, as a subquery. annotate(Count("batches")) would make
    SQLite group by every column of the run, its plan (megabytes on a large slide) included,
    on every step's end."""
    finished = BatchResult.objects.filter(run=OuterRef("pk")).order_by().values("run").annotate(n=Count("pk"))
    return Coalesce(Subquery(finished.values("n")), 0)


def in_flight(queue: str) -> int:
    """Steps on `queue` sent and not finished (see the module docstring)."""
    running = SlideRun.objects.filter(status=Status.RUNNING, prediction__status=Status.RUNNING)
    batches = (running.filter(prediction__pipeline__batch_queue=queue, batch_count__isnull=False)
               .annotate(done=batches_done()).values_list("batches_sent", "done"))
    count = sum(max(0, sent - done) for sent, done in batches)
    if queue == CPU:
        cpu_steps = running.aggregate(prepares=Count("pk", filter=Q(batch_count__isnull=True)),
                                      aggregates=Count("pk", filter=Q(aggregate_dispatched=True)))
        count += cpu_steps["prepares"] + cpu_steps["aggregates"]
    return count


# -- what to send next -----------------------------------------------------------------------
def active_in_run_order(queue: str | None = None) -> list[tuple[Entry, int]]:
    """Every queued or running prediction (all labs) in run order, with its pipeline row's id;
    plain values, so ordering a queue of thousands stays cheap. The queue pages use it too.

    queue: only the predictions whose tile batches run there (the dispatcher fills one queue's
    window at a time, and must not look at every prediction of the other queue to do it).
    """
    rows = Prediction.objects.filter(status__in=[Status.QUEUED, Status.RUNNING])
    if queue is not None:
        rows = rows.filter(pipeline__batch_queue=queue)
    pairs = entries_of(rows)
    pipeline_of = {e.pk: pipeline_id for e, pipeline_id in pairs}
    return [(e, pipeline_of[e.pk]) for e in run_order([e for e, _ in pairs])]


# What run order needs of a prediction, as values: entries_of reads them, and the queue pages
# read them through the slide runs (prefixed "prediction__").
ENTRY_FIELDS = ("pk", "experiment__lab_id", "priority", "status", "created_at", "started_at", "turn", "pipeline_id")


def entry_of(row) -> tuple[Entry, int]:
    """(run-order Entry, pipeline row id) from the ENTRY_FIELDS of one prediction."""
    pk, lab, priority, status, created, started, turn, pipeline_id = row
    return (Entry(pk, lab, priority == Prediction.Priority.URGENT, status == Status.RUNNING, created, started, turn),
            pipeline_id)


def entries_of(predictions) -> list[tuple[Entry, int]]:
    """(run-order Entry, pipeline row id) of each of these predictions (a queryset), unordered."""
    return [entry_of(row) for row in predictions.values_list(*ENTRY_FIELDS)]


def _queue_in_run_order(queue: str):
    """The ids of `queue`'s active predictions in run order, read from the database a few at a
    time: the dispatcher usually stops at the first or second one.

    The same order as run_order.run_order (tests/test_run_order.py compares them): the started
    ones (a handful: they hold the workers) as they started, then the waiting urgent ones, then
    the waiting normal ones, each by turn and age. The waiting ones come in the order of an index
    (prediction_waiting_idx), so a queue of thousands costs the first rows, not a sort of all.
    """
    on_queue = Prediction.objects.filter(pipeline__batch_queue=queue)
    yield from (on_queue.filter(status=Status.RUNNING).order_by(Coalesce("started_at", "created_at"), "pk")
                .values_list("pk", flat=True))
    urgent = Q(priority=Prediction.Priority.URGENT)
    for waiting in (on_queue.filter(urgent), on_queue.exclude(urgent)):
        yield from (waiting.filter(status=Status.QUEUED).order_by("turn", "created_at", "pk")
                    .values_list("pk", flat=True).iterator(chunk_size=20))


def new_turn(lab_id: int) -> int:
    """The turn of a prediction `lab_id` submits now (run_order.turn_after)."""
    # One query: the highest turn served (a constant subquery: the Value groups by nothing), and
    # each experiment's highest turn from its index (one index probe per experiment of the lab),
    # not the maximum over every prediction the lab ever made.
    served = (Prediction.objects.filter(started_at__isnull=False).exclude(priority=Prediction.Priority.URGENT)
              .order_by().annotate(all=Value(1)).values("all").annotate(t=Max("turn")).values("t"))
    highest = Prediction.objects.filter(experiment=OuterRef("pk")).order_by("-turn").values("turn")[:1]
    row = (Experiment.objects.filter(lab_id=lab_id).annotate(t=Subquery(highest), served=Subquery(served))
           .order_by(F("t").desc(nulls_last=True)).values_list("served", "t").first())
    served_turn, lab_last = row or (None, None)
    return turn_after(served_turn or 0, lab_last or 0)


def next_steps(prediction_id: int, queue: str, limit: int) -> tuple[list[Step], bool]:
    """Up to `limit` steps of one prediction that can be sent for `queue` now, in order, and
    whether it will have more for `queue` later (a slide still to prepare, batches not known yet
    or not sent): then the predictions behind it wait, so that it ends before they start.

    A slide's prepare belongs to its pipeline's batch queue: it runs on a cpu worker, but it is
    sent when the prediction's turn comes on the batch queue. For a gpu pipeline it is sent at
    the highest priority, like every aggregate, so a gpu prediction never waits behind cpu work
    to start (and cpu predictions are not held back by a gpu prediction still preparing).
    """
    prediction = Prediction.objects.select_related("pipeline").filter(pk=prediction_id).first()
    if prediction is None or prediction.is_final or (prediction.pipeline.batch_queue or CPU) != queue:
        return [], False
    runs = list(prediction.runs.exclude(status__in=[Status.SUCCEEDED, Status.FAILED, Status.CANCELLED])
                .order_by("pk").values("pk", "status", "batch_count", "batches_sent", "aggregate_dispatched"))
    steps: list[Step] = []
    more = False
    preparing = sum(1 for r in runs if r["status"] == Status.RUNNING and r["batch_count"] is None)
    # The next slide's prepare first: it takes one slot and makes the next batches, ready by the
    # time this slide's are done.
    for r in runs:
        if r["status"] != Status.QUEUED:
            continue
        if preparing >= PREPARING_PER_PREDICTION or len(steps) >= limit:
            more = True
            break
        steps.append(Step("prepare", prediction_id, r["pk"], queue=queue))
        preparing += 1
    for r in runs:
        if r["status"] == Status.QUEUED or r["batch_count"] is None:
            more = True          # its batches are not known yet
            continue
        if r["aggregate_dispatched"]:
            continue
        for index in range(r["batches_sent"], r["batch_count"]):
            if len(steps) >= limit:
                return steps, True
            steps.append(Step("batch", prediction_id, r["pk"], index, queue))
    return steps, more


# -- sending ---------------------------------------------------------------------------------
def dispatch(queue: str, *, quick: bool = False, if_room: bool = False) -> int:
    """Fill `queue`'s window in run order; returns how many steps were sent (after commit).

    quick: called from a web request; a broker that is away is given up on within seconds.
    if_room: a submit's start message. The window is first counted without the lock and, when it
    is full, nothing more is done: a backlog of start messages (many submits while the workers
    are busy) would otherwise take the lock one after the other for nothing, since the next step
    to end dispatches anyway. With room, it is counted again under the lock, which is what makes
    the count right.
    """
    if if_room and window(queue) - in_flight(queue) <= 0:
        return 0
    with transaction.atomic():
        # The lock: one dispatcher per queue at a time (a row UPDATE locks on every database).
        if not DispatchLock.objects.filter(queue=queue).update(at=timezone.now()):
            DispatchLock.objects.get_or_create(queue=queue)
            DispatchLock.objects.filter(queue=queue).update(at=timezone.now())
        free = window(queue) - in_flight(queue)
        if free <= 0:
            return 0
        chosen: list[Step] = []
        for prediction_id in _queue_in_run_order(queue):
            steps, more_later = next_steps(prediction_id, queue, free - len(chosen))
            chosen.extend(steps)
            if more_later or len(chosen) >= free:
                break   # the predictions behind this one wait until it has sent all its work
        for step in chosen:
            _record(step)
        if chosen:
            transaction.on_commit(lambda: _publish(chosen, quick))
    return len(chosen)


def dispatch_all(queues=QUEUE_NAMES, *, quick: bool = False, if_room: bool = False) -> None:
    """Fill the windows of these queues (all by default)."""
    for queue in queues:
        try:
            dispatch(queue, quick=quick, if_room=if_room)
        except Exception:  # noqa: BLE001
            # The caller's own work is done and committed (a submit, a finished step): never
            # fail it for this. The next step's end, or the periodic dispatch, tries again.
            log.exception("could not dispatch the %s queue", queue)


def start_if_idle(queue: str) -> None:
    """A submit's own dispatch, after its commit. With no step in flight on its queue, no step's
    end is coming to dispatch: the prediction starts in the request, so nothing submitted a moment
    later (an urgent prediction) can overtake one whose answer said "starts now". With steps in
    flight, the next to end dispatches, and the request costs the count, not the lock. (The start
    message is the fallback: it waits behind every step, so it runs when the queue has a moment.)"""
    if in_flight(queue) == 0:
        dispatch_all([queue], quick=True)


def _priority(step: Step) -> int:
    """The message priority of a dispatched step. Urgency is not one of them: the dispatcher has
    already put urgent work first, and a broker that honours priorities (RabbitMQ) would otherwise
    let an urgent prediction's steps overtake those of the prediction started before it."""
    if step.kind == "aggregate" or (step.kind == "prepare" and step.queue != CPU):
        return MAX_PRIORITY      # a finished slide, or a gpu prediction's start: see next_steps
    return PRIORITY_NORMAL


def _record(step: Step) -> None:
    now = timezone.now()
    if step.kind == "prepare":
        SlideRun.objects.filter(pk=step.run_id, status=Status.QUEUED).update(
            status=Status.RUNNING, started_at=now, dispatched_at=now)
        Prediction.objects.filter(pk=step.prediction_id, status=Status.QUEUED).update(
            status=Status.RUNNING, started_at=now)
    else:
        SlideRun.objects.filter(pk=step.run_id, batches_sent=step.index).update(
            batches_sent=step.index + 1, dispatched_at=now)


def _undo(step: Step) -> None:
    """The step was not sent: make it the next to send again."""
    if step.kind == "prepare":
        SlideRun.objects.filter(pk=step.run_id, status=Status.RUNNING, batch_count__isnull=True).update(
            status=Status.QUEUED, started_at=None)
        if not SlideRun.objects.filter(prediction_id=step.prediction_id).exclude(status=Status.QUEUED).exists():
            Prediction.objects.filter(pk=step.prediction_id, status=Status.RUNNING).update(
                status=Status.QUEUED, started_at=None)
    else:
        SlideRun.objects.filter(pk=step.run_id, batches_sent__gt=step.index).update(batches_sent=step.index)


def _publish(chosen: list[Step], quick: bool) -> None:
    from .engine import publish   # engine imports this module

    for position, step in enumerate(chosen):
        try:
            publish(step.task_name, step.args, task_id=step.task_id, priority=_priority(step), quick=quick)
        except Exception:
            log.warning("could not send %s; it will be sent again", step.task_id, exc_info=True)
            # In reverse, so each slide run's batch counter ends at its first unsent batch.
            for failed in reversed(chosen[position:]):
                _undo(failed)
            return


def send_unsent(*, older_than: timedelta = timedelta(seconds=60)) -> list[str]:
    """Send the steps recorded as sent that never reached the broker; returns their task ids.

    A dispatcher killed between its commit and its publish (its worker SIGKILLed, the machine
    gone) leaves steps counted in the window that no worker will ever run; a worker killed
    between claiming a slide's aggregate and sending it leaves the slide finished with no
    aggregate coming (its redelivered batch finds the claim taken). Every step sent has a task
    row from the moment it is published (task_records.record_sent), so a step recorded more than
    `older_than` ago without one was never sent: it is sent now, under its own task id (steps
    are idempotent, so one that did go out after all costs a no-op).

    Run by beat every minute (maintenance.resend_queued), and by every worker as it starts
    (_worker_ready): a worker restarted after a crash sends what it left unsent at once.
    """
    from django_celery_results.models import TaskResult

    from .engine import publish   # engine imports this module

    cutoff = timezone.now() - older_than
    steps = []
    runs = (SlideRun.objects.filter(status=Status.RUNNING, prediction__status=Status.RUNNING,
                                    dispatched_at__lt=cutoff)
            .annotate(done=batches_done()).select_related("prediction__pipeline").defer("plan"))
    for run in runs:
        queue = run.prediction.pipeline.batch_queue or CPU
        if run.batch_count is None:
            steps.append(Step("prepare", run.prediction_id, run.pk, queue=queue))
        elif run.aggregate_dispatched:
            steps.append(Step("aggregate", run.prediction_id, run.pk, queue=CPU))
        elif run.done < run.batches_sent:
            done = set(run.batches.values_list("index", flat=True))
            steps += [Step("batch", run.prediction_id, run.pk, i, queue) for i in range(run.batches_sent)
                      if i not in done]
    recorded = set(TaskResult.objects.filter(task_id__in=[s.task_id for s in steps]).values_list("task_id", flat=True))
    unsent = [s for s in steps if s.task_id not in recorded]
    for step in unsent:
        log.warning("step %s was counted as sent but never reached the broker; sending it now", step.task_id)
        publish(step.task_name, step.args, task_id=step.task_id, priority=_priority(step))
    return [s.task_id for s in unsent]


# -- workers reporting themselves -------------------------------------------------------------
# Each worker's main process writes its row when it starts, refreshes it with its heartbeats
# (at most once a REPORT_EVERY) and removes it when it stops; a worker killed outright simply
# falls silent and stops counting after WORKER_SILENT_AFTER.
REPORT_EVERY = timedelta(seconds=60)
_me: dict = {}


@signals.celeryd_after_setup.connect
def _worker_set_up(sender=None, instance=None, **kwargs):
    _me.update(hostname=str(sender), processes=int(getattr(instance, "concurrency", 1) or 1),
               queues=sorted(instance.app.amqp.queues.consume_from or {}), reported=None)
    _report()


@signals.worker_ready.connect
def _worker_ready(sender=None, **kwargs):
    # The steps a killed worker recorded and never sent (send_unsent), however recent: a worker
    # restarted at once by its supervisor is ready within a second of the kill, and a step it
    # recorded just before dying would otherwise wait for beat, or for ever where the run keeps
    # dispatching (its dispatched_at stays recent). A step that a live dispatcher is publishing
    # at this very moment goes twice, and the step ignores the second message.
    _quietly(lambda: send_unsent(older_than=timedelta(0)), "could not send the steps left unsent")
    # Nothing else is published from here: the worker's main process is not where steps are
    # sent (the next step to end, on a pool process, fills the windows). A dispatch here, at
    # every start, was followed now and then by a pool process's next step never reaching the
    # queue (tests/test_queue_order.py, a worker killed mid-queue), and was taken out.


@signals.heartbeat_sent.connect
def _heartbeat(sender=None, **kwargs):
    if _me and (_me["reported"] is None or timezone.now() - _me["reported"] >= REPORT_EVERY):
        _report()


@signals.worker_shutdown.connect
def _worker_stopping(sender=None, **kwargs):
    if _me:
        _quietly(lambda: WorkerSlots.objects.filter(hostname=_me["hostname"]).delete())


def _report() -> None:
    now = timezone.now()
    _quietly(lambda: WorkerSlots.objects.update_or_create(hostname=_me["hostname"], defaults={
        "queues": _me["queues"], "processes": _me["processes"], "seen_at": now}))
    _me["reported"] = now


def _quietly(write, failure: str = "could not record this worker's slots") -> None:
    """A write from a worker's main process: never let it stop the worker, and close the
    connection after it (the pool forks its processes from this one)."""
    from django.db import connection

    try:
        write()
    except Exception:  # noqa: BLE001
        log.warning(failure, exc_info=True)
    finally:
        connection.close()

