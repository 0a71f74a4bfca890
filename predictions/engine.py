"""Running predictions: submit, fan out per slide, batches, aggregate, finish, cancel.

The tasks in tasks.py are thin wrappers around these functions. The rules they keep
(DESIGN.md, "Rules that shape the design"):

- Dispatch after commit: every message is sent from transaction.on_commit.
- Short tasks: a slide is prepare → batches of tiles → aggregate; each batch a few seconds.
- Bounded fan-out, in queue order: steps reach the broker through the dispatcher
  (predictions/dispatch.py), a small window per queue refilled in run order as steps end, so
  predictions run one after the other in the order the dashboard shows, not all at once.
- Idempotent: a batch delivered twice replaces its own BatchResult row; prepare and aggregate
  can run again and overwrite what they wrote; a slide is claimed by a conditional UPDATE.
- Cancel is a flag checked at every task start (the next batch boundary); queued messages are
  also revoked so workers drop them without loading anything.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import time
from collections import deque
from contextlib import contextmanager
from contextvars import ContextVar

from celery import current_app
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import DatabaseError, transaction
from django.db.models import Sum
from django.utils import timezone

from experiments.slide_files import SlideFileError, SlideReader

from histoia.queues import MAX_PRIORITY, PRIORITY_LOW
from histoia.spreadsheet import dict_writer

from . import detections, dispatch, queueing, task_records
from .models import FINAL_STATES, BatchResult, Prediction, RegisteredModel, SlideRun, Status
from .models import result_path
from .pipelines import ParamError, Plan, Prepared

log = logging.getLogger(__name__)

# Publishing from a web request: a few quick tries (workers use the longer default policy).
SUBMIT_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}


class SubmitError(ValueError):
    """A submission the user must correct (bad parameter, slide not ready, no model...).

    `field` names the input at fault ("pipeline", "params", "slides"), so the API can answer
    with a field error; pages show str(exc).
    """

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


class QuotaExceeded(SubmitError):
    """A user or lab already has as many predictions queued or running as the settings allow
    (HISTOIA_MAX_ACTIVE_PER_USER, HISTOIA_MAX_ACTIVE_PER_LAB): the API answers 429."""


# Urgent work overtakes everyone's waiting work, so the lab's managers decide it (schedules and
# commands, run by admins, submit with no user and may too).
URGENT_REFUSED = ("Urgent priority is for the lab's managers and staff: submit it as normal, or ask a lab "
                  "manager to mark it urgent.")


def check_quota(experiment, user) -> None:
    """QuotaExceeded, saying what to do, when this submit would pass the user's or the lab's cap."""
    active = Prediction.objects.filter(status__in=[Status.QUEUED, Status.RUNNING])
    limit = settings.HISTOIA_MAX_ACTIVE_PER_USER
    if user is not None and limit and active.filter(triggered_by=user).count() >= limit:
        raise QuotaExceeded(f"You already have {limit} predictions queued or running, the most one user may "
                            "have at once: wait for some to end, or cancel some, then submit again.")
    limit = settings.HISTOIA_MAX_ACTIVE_PER_LAB
    if limit and active.filter(experiment__lab_id=experiment.lab_id).count() >= limit:
        raise QuotaExceeded(f"Your lab already has {limit} predictions queued or running, the most one lab may "
                            "have at once: wait for some to end, or ask an admin to raise the limit.")


# -- submit -------------------------------------------------------------------------------------
def submit(experiment, pipeline_row, slides, params=None, *, user=None, trigger=Prediction.Trigger.USER,
           priority=Prediction.Priority.NORMAL, schedule_name="", rerun_of=None) -> Prediction:
    """Create a queued prediction and send its one start message after commit."""
    if not pipeline_row.enabled or not pipeline_row.installed:
        raise SubmitError(f"The pipeline {pipeline_row} is disabled.", "pipeline")
    if priority == Prediction.Priority.URGENT and user is not None and not experiment.lab.is_manager(user):
        raise SubmitError(URGENT_REFUSED, "priority")
    check_quota(experiment, user)
    code = pipeline_row.code
    try:
        parsed = code.parse_params(params)
    except ParamError as exc:
        raise SubmitError(str(exc), "params") from exc
    slides = list(slides)
    if not slides:
        raise SubmitError("Choose at least one slide.", "slides")
    not_ready = [s.original_name for s in slides if s.status != s.Status.READY]
    if not_ready:
        raise SubmitError(f"These slides are not ready: {', '.join(not_ready)}.", "slides")
    if any(s.experiment_id != experiment.pk for s in slides):
        raise SubmitError("Every slide must belong to the experiment.", "slides")
    stains = {s.pk: s.stain or experiment.stain for s in slides}
    refused = {}
    for s in slides:
        reason = code.check_stain(stains[s.pk])
        if reason:
            refused.setdefault(reason, []).append(s.original_name)
    if refused:
        raise SubmitError(" ".join(f"{', '.join(names)}: {reason}" for reason, names in refused.items()), "slides")
    model = None
    if code.model_name:
        model = current_model(code.model_name)
        if model is None:
            raise SubmitError(f"No enabled model “{code.model_name}” is registered; an admin must register one.",
                              "pipeline")
    with transaction.atomic():
        prediction = Prediction.objects.create(
            experiment=experiment, pipeline=pipeline_row, model=model, params=parsed,
            priority=priority, trigger=trigger, triggered_by=user, schedule_name=schedule_name,
            rerun_of=rerun_of, model_sha256=model.sha256 if model else "",
            software_version=settings.HISTOIA_VERSION, total_units=2 * len(slides),
            turn=dispatch.new_turn(experiment.lab_id),
        )
        SlideRun.objects.bulk_create([
            SlideRun(prediction=prediction, slide=s, slide_sha256=s.sha256, total_units=2,
                     declared_stain=stains[s.pk]) for s in slides
        ])
        queue = pipeline_row.batch_queue or dispatch.CPU
        # robust: the submit is committed; whatever fails here, the start message still goes.
        transaction.on_commit(lambda: dispatch.start_if_idle(queue), robust=True)
        send_start(prediction)
    return prediction


def current_model(model_name: str) -> RegisteredModel | None:
    """The model a new prediction of a model pipeline uses: the newest enabled of its family."""
    return RegisteredModel.objects.filter(name=model_name, enabled=True).order_by("-created_at", "-pk").first()


def send_start(prediction: Prediction) -> None:
    """Send the start message after commit; a broker that is away does not fail the submit.

    The message only wakes the dispatcher, which puts the work in run order (urgent first). It
    goes behind every step (PRIORITY_LOW): a submit to an idle queue has already started its
    prediction (dispatch.start_if_idle), and on a busy queue the next step to end dispatches
    anyway, so a burst of submits (a script sending hundreds) must not hold the running steps
    back (bench/submit_burst.py). With room and no step waiting, a worker takes it at once.
    The prediction stays queued if it cannot be sent, and predictions.cpu.resend_queued_predictions
    sends it again (it finds no task row for start_task_id: the row written with the prediction is
    removed then).
    """
    _send_after_commit("predictions.cpu.start_prediction", prediction, [prediction.pk],
                       task_id=start_task_id(prediction), robust=True, priority=PRIORITY_LOW)


def _send_after_commit(task_name, prediction, args, task_id=None, robust=False, priority=None):
    inline = _inline.get()
    if inline is not None:  # inside inline_steps(): the step runs in this process, not on a worker
        transaction.on_commit(lambda: inline.send(task_name, args))
        return
    priority = prediction.celery_priority if priority is None else priority
    # Submitted from a page or the API: the task row is written with the caller's rows, in its
    # transaction, rather than in a transaction of its own at publish time.
    headers = task_records.record_queued(task_id, task_name, args) if robust else None

    def send():
        if not robust:
            current_app.send_task(task_name, args=args, task_id=task_id, priority=priority)
            return
        try:
            # Give up on the broker within a few seconds rather than hold the request; the
            # re-send job sends it later.
            current_app.send_task(task_name, args=args, task_id=task_id, priority=priority,
                                  retry_policy=SUBMIT_RETRY, headers=headers)
        except Exception:
            log.warning("could not send %s for prediction %s; it will be sent again", task_name,
                        prediction.pk, exc_info=True)
            _forget_unsent(task_id)

    transaction.on_commit(send)


def publish(task_name: str, args: list, *, task_id: str, priority: int, quick: bool = False) -> None:
    """Send one step now (the dispatcher calls this after its commit); raises if the broker
    refuses it. quick: from a web request, give up within seconds. Inside inline_steps() the
    step joins the in-process line instead."""
    inline = _inline.get()
    if inline is not None:
        inline.send(task_name, args)
        return
    options = {"retry_policy": SUBMIT_RETRY} if quick else {}
    current_app.send_task(task_name, args=args, task_id=task_id, priority=priority, **options)


def _forget_unsent(task_id):
    from django_celery_results.models import TaskResult

    try:
        TaskResult.objects.filter(task_id=task_id, status="PENDING").delete()
    except DatabaseError:
        log.warning("could not remove the task row of unsent task %s", task_id, exc_info=True)


def start_task_id(prediction) -> str:
    return f"p{prediction.pk}-start"


def prepare_task_id(run: SlideRun) -> str:
    return f"p{run.prediction_id}-r{run.pk}-prepare"


def aggregate_task_id(run: SlideRun) -> str:
    return f"p{run.prediction_id}-r{run.pk}-aggregate"


def batch_task_id(run: SlideRun, index: int) -> str:
    # Deterministic ids: cancel can revoke them without having stored them, and a re-sent batch
    # is recognisably the same task in the result table.
    return f"p{run.prediction_id}-r{run.pk}-b{index}"


# -- start and advance --------------------------------------------------------------------------
def start(prediction_id: int) -> None:
    """The submit's message: the dispatcher starts the prediction when its turn comes (at once
    when the workers have room), in the order the queue shows. Only its pipeline's queue can
    have room for it, and with none the next step to end dispatches."""
    prediction = Prediction.objects.filter(pk=prediction_id).select_related("pipeline").first()
    queues = [prediction.pipeline.batch_queue or dispatch.CPU] if prediction is not None else dispatch.QUEUE_NAMES
    dispatch.dispatch_all(queues, if_room=True)


def advance(prediction_id: int) -> None:
    """After a slide ended: finish the prediction when every slide is final, and let the
    dispatcher fill the room the slide left."""
    prediction = Prediction.objects.filter(pk=prediction_id).first()
    if prediction is not None and not prediction.is_final:
        if not prediction.runs.exclude(status__in=FINAL_STATES).exists():
            finish(prediction)
    dispatch.dispatch_all()


def finish(prediction: Prediction) -> None:
    statuses = list(prediction.runs.values_list("status", flat=True))
    failed = [s for s in statuses if s == Status.FAILED]
    if prediction.status == Status.CANCELLED:
        return
    if not failed:
        status, error = Status.SUCCEEDED, ""
    elif len(failed) == len(statuses):
        status, error = Status.FAILED, "Every slide failed; see each slide's reason."
    else:
        names = ", ".join(prediction.runs.filter(status=Status.FAILED).values_list("slide__original_name", flat=True))
        status, error = Status.PARTIAL, f"{len(failed)} of {len(statuses)} slides failed: {names}."
    Prediction.objects.filter(pk=prediction.pk, status=Status.RUNNING).update(
        status=status, error=error, finished_at=timezone.now())
    refresh_progress(prediction.pk)


def refresh_progress(prediction_id: int) -> None:
    sums = SlideRun.objects.filter(prediction_id=prediction_id).aggregate(done=Sum("done_units"), total=Sum("total_units"))
    Prediction.objects.filter(pk=prediction_id).update(done_units=sums["done"] or 0, total_units=sums["total"] or 0)


# -- the three steps of a slide -----------------------------------------------------------------
def _live_run(run_id: int, with_plan: bool = True) -> SlideRun | None:
    """The run if there is still work to do for it (not cancelled, failed or gone)."""
    runs = SlideRun.objects.select_related("prediction__pipeline", "prediction__model", "slide")
    run = (runs if with_plan else runs.defer("plan")).filter(pk=run_id).first()
    if run is None or run.status != Status.RUNNING or run.prediction.status != Status.RUNNING:
        return None
    return run


def _model_spec(prediction):
    return prediction.model.spec() if prediction.model_id else None


def _batch_floor(pipeline_name: str) -> int:
    """Tiles that one worker process of the pipeline's queue was measured to do in
    HISTOIA_MIN_BATCH_SECONDS (0 before it has run here: the pipeline's own sizing holds)."""
    measured = queueing.throughput(pipeline_name, fresh=True)
    if measured.no_history or not settings.HISTOIA_MIN_BATCH_SECONDS:
        return 0
    return int(measured.tiles_per_second * settings.HISTOIA_MIN_BATCH_SECONDS)


def prepare(run_id: int) -> None:
    run = _live_run(run_id)
    if run is None:
        return
    code = run.prediction.pipeline.code
    with _failing_run(run, "prepare"):
        started = time.monotonic()
        if run.plan is None:  # not prepared yet (a redelivered prepare skips the work)
            with kept_open(run.slide.file.path) as reader:
                prepared = code.prepare(reader, run.prediction.params, _model_spec(run.prediction),
                                        stain=run.declared_stain)
            run.tissue_mask.name = _store(run, "tissue_mask.png", _png(_mask_image(prepared.mask)))
            if prepared.plan.tiles:
                prepared.plan.batch_size = code.batch_size(len(prepared.plan.tiles), prepared.plan.tile_size,
                                                           at_least=_batch_floor(run.prediction.pipeline.name))
            run.plan = prepared.plan.to_json()
            run.stain_estimate = prepared.plan.extras.get("stain")
            run.total_units = len(prepared.plan.tiles) + 2
            run.done_units = 1
            run.timings = {**run.timings, "prepare_s": round(time.monotonic() - started, 3)}
            # Its batches now exist: the dispatcher sends them as their turn comes.
            run.batch_count = len(prepared.plan.batches())
            run.save(update_fields=["plan", "stain_estimate", "tissue_mask", "total_units", "done_units", "timings",
                                    "batch_count"])
            refresh_progress(run.prediction_id)
        elif run.batch_count is None:  # prepared before the dispatcher counted batches
            run.batch_count = len(Plan.from_json(run.plan).batches())
            SlideRun.objects.filter(pk=run.pk).update(batch_count=run.batch_count)
        if run.batch_count == 0 or run.batches.count() >= run.batch_count:
            _claim_aggregate(run)
    dispatch.dispatch_all()


def run_batch(run_id: int, index: int, queue: str, worker: str | None) -> None:
    run = _live_run(run_id, with_plan=False)
    if run is None:
        return
    code = run.prediction.pipeline.code
    with _failing_run(run, f"tile batch {index + 1}"):
        started_at, started = timezone.now(), time.monotonic()
        prepared = _prepared_of(run)
        plan = prepared.plan
        with kept_open(run.slide.file.path) as reader:
            rows = code.process_tiles(reader, prepared, plan.batches()[index], run.prediction.params,
                                      _model_spec(run.prediction))
        found = detections.pop_from_rows(rows)
        if found is not None:
            detections.save_batch(run, index, found)
        BatchResult.objects.update_or_create(run=run, index=index, defaults={
            "rows": rows, "tiles": len(rows), "queue": queue, "worker": worker or socket.gethostname(),
            "started_at": started_at, "finished_at": timezone.now(),
            "seconds": round(time.monotonic() - started, 4),
        })
    # Counted after our row is committed, so the last batch to finish always sees all of them.
    tiles_done = run.batches.aggregate(n=Sum("tiles"))["n"] or 0
    SlideRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(done_units=1 + tiles_done)
    refresh_progress(run.prediction_id)
    if run.batches.count() == len(plan.batches()):
        _claim_aggregate(run)
    dispatch.dispatch_all()


# A slide's plan lists every tile (3 MB of JSON, 100 ms to read and decode, for the 170,000 tiles
# of a 40,000 px slide at the model's 64 px) and is written once, by its prepare. The batches of
# one slide follow each other on a worker process: it decodes the plan, and reads the tissue
# mask, once per slide rather than once per batch.
_kept_prepared: tuple[tuple, Prepared] | None = None


def _prepared_of(run: SlideRun) -> Prepared:
    """The run's plan and tissue mask (read-only: every batch of the slide shares them)."""
    global _kept_prepared
    # The prediction's creation time too: a test database may give a run's id to a new run.
    key = (run.pk, run.prediction.created_at, run.tissue_mask.name)
    if _kept_prepared is None or _kept_prepared[0] != key:
        plan = Plan.from_json(SlideRun.objects.values_list("plan", flat=True).get(pk=run.pk))
        mask = _stored_mask(run)
        mask.flags.writeable = False
        _kept_prepared = (key, Prepared(plan, mask))
    return _kept_prepared[1]


# The batches of one slide follow each other on a worker process: keep the last slide open, so
# the file is not parsed again for every batch and OpenSlide's tile cache carries over (the
# tiles of neighbouring batches share the scanner's compressed tiles, decoded once).
_kept: tuple[tuple, SlideReader] | None = None


@contextmanager
def kept_open(path: str):
    """The slide at `path`, opened once per process for as long as the file is unchanged."""
    global _kept
    try:
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = None  # SlideReader says what is wrong
    if _kept is None or key is None or _kept[0] != key:
        forget_kept()
        _kept = (key, SlideReader(path))
    try:
        yield _kept[1]
    except BaseException:
        forget_kept()  # a read that failed may have left the handle in any state
        raise


def forget_kept() -> None:
    global _kept
    if _kept is not None:
        _kept[1].close()
        _kept = None


def _claim_aggregate(run: SlideRun) -> bool:
    """Send the slide's aggregate once: outside the dispatcher's window and at the highest
    priority, so a finished slide never waits behind other predictions' batches."""
    # dispatched_at: a worker killed between this claim and its send leaves the aggregate
    # claimed and unsent; dispatch.send_unsent finds it by that time and its missing task row.
    if SlideRun.objects.filter(pk=run.pk, aggregate_dispatched=False).update(aggregate_dispatched=True,
                                                                             dispatched_at=timezone.now()):
        with transaction.atomic():
            _send_after_commit("predictions.cpu.aggregate_slide", run.prediction, [run.pk],
                               task_id=aggregate_task_id(run), priority=MAX_PRIORITY)
        return True
    return False


def aggregate(run_id: int) -> None:
    run = _live_run(run_id)
    if run is None:
        # Redelivered after its worker was killed between ending the slide and advancing the
        # prediction: the advance is what is left to do (it is idempotent).
        prediction_id = SlideRun.objects.filter(pk=run_id).values_list("prediction_id", flat=True).first()
        if prediction_id is not None:
            advance(prediction_id)
        return
    code = run.prediction.pipeline.code
    model = _model_spec(run.prediction)
    with _failing_run(run, "aggregate"):
        started = time.monotonic()
        plan = Plan.from_json(run.plan)
        rows = [row for batch in run.batches.order_by("index") for row in batch.rows]
        if len(rows) != len(plan.tiles):
            raise RuntimeError(f"expected {len(plan.tiles)} tile rows, found {len(rows)}")
        mask = _stored_mask(run)
        run.detections.name = detections.merge(run, len(plan.batches()))
        found = detections.load(run) if run.detections else None
        outcome = code.aggregate(Prepared(plan, mask), rows, run.prediction.params, model, detections=found)
        images = {}
        for name, image in outcome.images.items():
            if plan.grid_shape != (0, 0) and image.size == (plan.grid_shape[1], plan.grid_shape[0]):
                image = code.fit_to_slide(image, plan, run.slide.width, run.slide.height)
            # "overlay-": never the same file as the run's own tissue mask, which aggregate reads.
            images[name] = {"path": _store(run, f"overlay-{name}.png", _png(image)),
                            "legend": outcome.legends.get(name, {})}
        table = _store(run, "tiles.csv", ContentFile(tile_table_csv(code, plan, rows).encode()))
        with transaction.atomic():
            SlideRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(
                metrics=outcome.metrics, images=images, tile_table=table, detections=run.detections.name or "",
                status=Status.SUCCEEDED, done_units=run.total_units, finished_at=timezone.now(),
                timings={**run.timings, "aggregate_s": round(time.monotonic() - started, 3),
                         "tiles_s": round(sum(run.batches.values_list("seconds", flat=True)), 3)},
            )
    refresh_progress(run.prediction_id)
    advance(run.prediction_id)


def _stored_mask(run: SlideRun):
    with run.tissue_mask.open("rb") as fh:
        return _mask_from_image(fh.read())


def _store(run: SlideRun, filename: str, content: ContentFile) -> str:
    """Save a result file under a fixed name, replacing an earlier attempt's file."""
    storage = run.tile_table.storage
    path = result_path(run, filename)
    if storage.exists(path):
        storage.delete(path)
    return storage.save(path, content)


def tile_table_csv(code, plan: Plan, rows: list[dict]) -> str:
    """One line per analysed tile: where it is (level-0 px), its tissue fraction and figures."""
    out = io.StringIO()
    records = code.tile_records(plan, rows)
    fields = list(records[0]) if records else ["tile", "row", "col", "x", "y", "size_px", "tissue_fraction"]
    writer = dict_writer(out, fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


class _failing_run:
    """Context manager: an error in a step fails this slide (with a reason), never the others."""

    def __init__(self, run: SlideRun, step: str):
        self.run, self.step = run, step

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, DatabaseError) or not isinstance(exc, Exception):
            return False  # the database is away: the task retries, the slide has not failed
        if isinstance(exc, SlideFileError):
            # The slide was readable when it was checked, so the stored copy changed since.
            reason = f"The slide could not be read any more; the stored file may be damaged. {exc}"
        else:
            reason = f"The {self.step} step failed: {type(exc).__name__}: {exc}"
        log.warning("slide run %s failed in %s: %s", self.run.pk, self.step, reason)
        fail_run(self.run, reason)
        return True


def fail_run(run: SlideRun, reason: str) -> None:
    updated = SlideRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(
        status=Status.FAILED, error=reason[:2000], finished_at=timezone.now())
    if updated:
        advance(run.prediction_id)


# -- cancel -------------------------------------------------------------------------------------
class CancelError(ValueError):
    pass


def cancel(prediction: Prediction, user=None) -> None:
    """Stop a prediction: queued messages are revoked, running batches stop at the next boundary."""
    now = timezone.now()
    updated = Prediction.objects.filter(pk=prediction.pk, status__in=[Status.QUEUED, Status.RUNNING]).update(
        status=Status.CANCELLED, cancelled_at=now, cancelled_by=user, finished_at=now)
    if not updated:
        prediction.refresh_from_db()
        raise CancelError(f"This prediction has already ended ({prediction.get_status_display().lower()}).")
    prediction.runs.filter(status__in=[Status.QUEUED, Status.RUNNING]).update(status=Status.CANCELLED, finished_at=now)
    pending = list(task_records.task_rows_of(prediction).filter(status="PENDING").values_list("task_id", flat=True))
    if pending:
        try:
            current_app.control.revoke(pending)
        except Exception:  # the flag alone already stops them; revoking only saves the loading
            log.warning("could not broadcast revoke for prediction %s", prediction.pk, exc_info=True)
    dispatch.dispatch_all(quick=True)   # its place goes to the next prediction at once
    prediction.refresh_from_db()


# -- running the steps here instead of on the workers (demo data) ------------------------------
class InlineSteps:
    """The steps sent while inline_steps() is active; run() runs them here, in the order sent."""

    def __init__(self):
        self.pending: deque[tuple[str, tuple]] = deque()
        self.ran = 0

    def send(self, task_name: str, args) -> None:
        """Add a step to the end of the line (what a message to the workers would be)."""
        self.pending.append((task_name, tuple(args)))

    def run(self, progress=None) -> int:
        """Run the steps waiting, and those they send, until none is left; returns how many ran.

        `progress(steps)` is called after each step. A step's own failure fails its slide with
        a reason, as on a worker; an error outside a step (the database is away) stops here.
        """
        while self.pending:
            self.run_next()
            if progress:
                progress(self)
        return self.ran

    def run_next(self) -> None:
        """Run the first step of the line."""
        task_name, args = self.pending.popleft()
        step = _INLINE_STEPS.get(task_name)
        if step is None:
            raise LookupError(f"{task_name} is not a prediction step; inline_steps() cannot run it.")
        step(*args)
        self.ran += 1


# The functions behind the step tasks of tasks.py, by task name. A tile batch run here records
# this machine's name as its worker.
_INLINE_STEPS = {
    "predictions.cpu.start_prediction": start,
    "predictions.cpu.prepare_slide": prepare,
    "predictions.cpu.tile_batch": lambda run_id, index: run_batch(run_id, index, "cpu", None),
    "predictions.gpu.tile_batch": lambda run_id, index: run_batch(run_id, index, "gpu", None),
    "predictions.cpu.aggregate_slide": aggregate,
}
_inline: ContextVar[InlineSteps | None] = ContextVar("histoia_inline_steps", default=None)


@contextmanager
def inline_steps():
    """Run predictions' steps in this process instead of sending them to the workers.

    For making demo data before any worker runs (manage.py seed_validation, so `make run`):
    while active, every step the engine would send after commit (start, prepare, tile batches,
    aggregate) is kept in the InlineSteps this yields, and its run() runs them one after the
    other in the order sent; a step sent by a running step joins the end of the line, so
    nothing nests. They are the functions the workers run (the tasks are thin wrappers around
    them), so the figures are the same; nothing reaches the broker and no task row is written,
    and the queues, priorities and retries of the real stack are not exercised. Never for a
    page or the API: the request would wait for the whole prediction.

        with engine.inline_steps() as steps:
            submit(experiment, pipeline, slides)
            steps.run()
    """
    steps = InlineSteps()
    token = _inline.set(steps)
    try:
        yield steps
    finally:
        _inline.reset(token)
        forget_kept()  # the slide the last step kept open


# -- images -------------------------------------------------------------------------------------
def _png(image) -> ContentFile:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return ContentFile(buffer.getvalue())


def _mask_image(mask):
    from PIL import Image

    return Image.fromarray(mask.astype("uint8") * 255, mode="L")


def _mask_from_image(data: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 127
