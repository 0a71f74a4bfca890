"""Task rows from the moment a task is sent, so a queued task is a real, visible state; and the
task rows of one prediction, for its page.

django-celery-results writes a TaskResult row only when a worker reports on the task. We write
it at publish time with state PENDING ("queued"); the worker later updates the same row.
"""

import logging
from dataclasses import dataclass

from celery import states
from celery.utils.saferepr import saferepr
from django.db import DatabaseError

log = logging.getLogger(__name__)


# A message whose row was written already, in the transaction that decided to send it
# (record_queued): the publish does not write it again.
RECORDED_HEADER = "histoia_recorded"


def record_sent(headers: dict, routing_key: str | None) -> None:
    task_id = headers.get("id")
    if not task_id or headers.get(RECORDED_HEADER):
        return
    try:
        _insert(task_id, headers.get("task"), headers.get("argsrepr"), headers.get("kwargsrepr"),
                headers.get("periodic_task_name"))
    except DatabaseError:
        # Never let bookkeeping stop a task from being sent.
        log.warning("could not record queued task %s", task_id, exc_info=True)


def record_queued(task_id: str, task_name: str, args: list) -> dict:
    """Write a task's row now, inside the caller's transaction, for a message it sends after
    commit; returns the headers that message carries so its publish does not write it again.

    A submit does this for its start message: the row is one more statement of the transaction
    that writes the prediction, not a transaction of its own at publish time.
    """
    _insert(task_id, task_name, saferepr(args), "{}", None)
    return {RECORDED_HEADER: True}


def _insert(task_id, task_name, args_repr, kwargs_repr, periodic_task_name) -> None:
    from django_celery_results.models import TaskResult

    # One INSERT … ON CONFLICT DO NOTHING, not get_or_create's read, savepoint and write: this
    # runs for every message sent. A row already there (a message sent again under its
    # deterministic id) keeps what the worker wrote into it.
    TaskResult.objects.bulk_create([TaskResult(
        task_id=task_id,
        status=states.PENDING,
        task_name=task_name,
        task_args=args_repr,
        task_kwargs=kwargs_repr,
        periodic_task_name=periodic_task_name,
        worker=None,
        content_type="application/json",
        content_encoding="utf-8",
    )], ignore_conflicts=True)


# -- a prediction's tasks, as the staff see them on its page ----------------------------------------
# Most tasks listed on the page; a prediction over many large slides sends thousands of tile
# batches. Failed tasks are always listed, whatever their number.
TASKS_SHOWN = 200

# A Celery state as the page's badges show states (the prediction's own status colours).
STATE_BADGE = {states.PENDING: "queued", states.RECEIVED: "queued", states.STARTED: "running",
               states.RETRY: "running", states.SUCCESS: "succeeded", states.FAILURE: "failed",
               states.REVOKED: "cancelled"}


@dataclass
class PredictionTasks:
    """The task rows of one prediction: `shown` in the order they were sent, `counts` per state
    over all of them, `hidden` how many of them are left out of `shown`."""

    shown: list
    counts: dict[str, int]
    hidden: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def task_rows_of(prediction):
    """The task rows of one prediction, by their ids' prefix (see prediction_tasks)."""
    from django_celery_results.models import TaskResult

    return TaskResult.objects.filter(task_id__startswith=f"p{prediction.pk}-").order_by()   # not by date_done


def prediction_tasks(prediction, limit: int = TASKS_SHOWN) -> PredictionTasks:
    """The Celery tasks of one prediction as django-celery-results recorded them.

    Found by task id. The engine gives every task it sends for a prediction a deterministic id
    that starts with "p<prediction id>-" (engine.start_task_id, prepare_task_id, batch_task_id,
    aggregate_task_id), and cancel and the stuck-prediction sweep already find the tasks by it;
    the dash ends the number, so prediction 1 never matches prediction 12's tasks. No second
    record of the link to keep in step (a row of our own would have to be written, re-sent and
    expired with each task row), and nothing read from task_args, which holds slide-run ids in a
    repr meant for people. A row expired by TASK_RESULT_EXPIRE_DAYS is simply no longer listed.
    """
    from django.db.models import Count

    rows = task_rows_of(prediction)
    counts = dict(rows.values_list("status").annotate(n=Count("id")).order_by("status"))
    columns = ["task_id", "task_name", "status", "worker", "date_created", "date_started", "date_done",
               "traceback"]
    failed = list(rows.filter(status=states.FAILURE).only(*columns))
    others = list(rows.exclude(status=states.FAILURE).only(*columns)
                  .order_by("date_created", "pk")[: max(0, limit - len(failed))])
    shown = sorted(failed + others, key=lambda row: (row.date_created, row.pk))
    for row in shown:
        row.badge = STATE_BADGE.get(row.status, "pending")
        # date_done is rewritten at every state change (auto_now): it is an end only once the
        # task has ended.
        row.done_at = row.date_done if row.status in states.READY_STATES else None
    return PredictionTasks(shown=shown, counts=counts, hidden=sum(counts.values()) - len(shown))
