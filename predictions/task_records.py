"""Task rows from the moment a task is sent, so a queued task is a real, visible state.

django-celery-results writes a TaskResult row only when a worker reports on the task. We write
it at publish time with state PENDING ("queued"); the worker later updates the same row.
"""

import logging

from celery import states
from django.db import DatabaseError

log = logging.getLogger(__name__)


def record_sent(headers: dict, routing_key: str | None) -> None:
    from django_celery_results.models import TaskResult

    task_id = headers.get("id")
    if not task_id:
        return
    try:
        TaskResult.objects.get_or_create(
            task_id=task_id,
            defaults={
                "status": states.PENDING,
                "task_name": headers.get("task"),
                "task_args": headers.get("argsrepr"),
                "task_kwargs": headers.get("kwargsrepr"),
                "periodic_task_name": headers.get("periodic_task_name"),
                "worker": None,
                "content_type": "application/json",
                "content_encoding": "utf-8",
            },
        )
    except DatabaseError:
        # Never let bookkeeping stop a task from being sent.
        log.warning("could not record queued task %s", task_id, exc_info=True)
