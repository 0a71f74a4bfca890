"""The Celery app: two durable queues, `cpu` and `gpu`, and settings for long tasks.

Every task is routed by the queue its name gives (`<app>.<queue>.<task>`, histoia/queues.py)
to one of the two queues; there is no `celery` queue that no worker reads.
"""

import logging
import os

from celery import Celery, signals
from django.conf import settings
from kombu import Exchange, Queue

from .queues import MAX_PRIORITY, PRIORITY_NORMAL, QUEUE_NAMES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "histoia.settings")

logger = logging.getLogger(__name__)

app = Celery("histoia")
app.config_from_object("django.conf:settings", namespace="CELERY")

_exchange = Exchange("histoia", type="direct", durable=True)


def queue_arguments(queue_type: str) -> dict:
    """The arguments the cpu and gpu queues are declared with (CELERY_BROKER_QUEUE_TYPE).

    They must be right from the start: RabbitMQ refuses to redeclare a queue with other
    arguments.
    """
    if queue_type == "quorum":
        # Replicated on the cluster's nodes: a message RabbitMQ has confirmed survives the loss
        # of any one node. What it costs: RabbitMQ 3.x quorum queues take no x-max-priority and
        # deliver in publish order, so message priority is ignored. A slide's aggregate and a
        # gpu prediction's prepare then wait behind the messages already in the queue (and a
        # submit's start message no longer waits behind them); but the dispatcher
        # (predictions/dispatch.py) keeps only a small window of each queue's work in the
        # broker, sent in run order, so the order the queue pages show is mostly kept and such a
        # message waits for a few steps at most.
        # Workers see the type here (worker_detect_quorum_queues) and turn off global QoS,
        # which quorum queues refuse. A step retried after a database outage (a countdown,
        # predictions/tasks.py) still runs: the worker holds the message until its time, as on
        # a classic queue, but its prefetch is then fixed, so the message keeps one of the
        # worker's places meanwhile (a solo gpu worker takes nothing else; a minute at most).
        return {"x-queue-type": "quorum"}
    # x-max-priority lets "urgent" predictions overtake waiting normal work on RabbitMQ.
    return {"x-max-priority": MAX_PRIORITY}


QUEUES = {
    name: Queue(name, _exchange, routing_key=name, durable=True,
                queue_arguments=queue_arguments(settings.CELERY_BROKER_QUEUE_TYPE))
    for name in QUEUE_NAMES
}

app.conf.update(
    task_queues=tuple(QUEUES.values()),
    task_default_queue="cpu",
    task_default_exchange="histoia",
    task_default_routing_key="cpu",
    task_create_missing_queues=False,
    # Task names are <app>.<queue>.<task> (histoia/queues.py): the queue part routes them.
    task_routes={f"*.{name}.*": {"queue": name} for name in QUEUE_NAMES},
    task_default_priority=PRIORITY_NORMAL,
    # Long tasks: acknowledge only once done, so a killed worker's task is delivered again;
    # take one message at a time, so a busy worker does not sit on work another could do.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # A worker whose link to RabbitMQ went down for a while finds its connection broken before
    # RabbitMQ does (heartbeats are off, histoia/settings.py), and reconnects. Its control queue
    # (the pidbox, which answers the monitoring page's questions) must not be exclusive to the
    # old connection, or the worker stops with RESOURCE_LOCKED instead of carrying on. The old
    # queue expires on its own once unused (control_queue_expires).
    control_queue_exclusive=False,
    # A worker sending a step's next messages rides out a broker restart (about a minute)
    # instead of failing the step; the web process passes a shorter policy (engine.send_start).
    task_publish_retry_policy={"max_retries": 30, "interval_start": 0.5, "interval_step": 0.5,
                               "interval_max": 2},
    # Task states are written to the database: retry those writes through a database restart
    # (histoia/result_backend.py) instead of failing the task or stopping the worker.
    result_backend_always_retry=True,
    result_backend_max_retries=15,
    result_backend_base_sleep_between_retries_ms=200,
    result_backend_max_sleep_between_retries_ms=5000,
    # Work is cut into short batches; anything near RabbitMQ's ack timeout is a bug.
    task_time_limit=20 * 60,
    task_soft_time_limit=18 * 60,
    worker_send_task_events=True,
    task_send_sent_event=True,
)

app.autodiscover_tasks()


@signals.before_task_publish.connect
def record_queued_task(sender=None, headers=None, body=None, routing_key=None, **kwargs):
    """Create the task's result row when it is sent, so "queued" is a state pages can show.

    django-celery-results only writes a row once a worker starts the task; until then a queued
    task would be invisible. The worker later updates this same row (keyed by task id).
    """
    from predictions.task_records import record_sent

    record_sent(headers or {}, routing_key)


@signals.worker_init.connect
def lower_worker_priority(**kwargs):
    """Run tasks at a lower CPU priority than the web process (CELERY_WORKER_NICENESS).

    Where web and workers share cores (make run, a single server), saturated workers would
    otherwise slow every page; the pool's processes inherit the niceness from this one. On a
    machine that runs workers alone it changes nothing.
    """
    from django.conf import settings

    if settings.CELERY_WORKER_NICENESS:
        os.nice(settings.CELERY_WORKER_NICENESS)


@signals.worker_init.connect
def keep_freed_memory_for_reuse(sender=None, **kwargs):
    """Tile batches free and allocate the same large arrays over and over: keep that memory in
    the process rather than fault it in again from the kernel (histoia/malloc.py). The pool's
    processes inherit the setting from this one."""
    from .malloc import keep_freed_memory

    done = keep_freed_memory(settings.WORKER_MALLOC_MMAP_THRESHOLD_MB, settings.WORKER_MALLOC_TRIM_THRESHOLD_MB)
    logger.info("worker memory: %s", done)


@signals.celeryd_init.connect
def leave_out_native_delayed_delivery(conf=None, **kwargs):
    """On quorum queues, start the worker without Celery's native delayed delivery.

    Celery sets it up as soon as it sees a quorum queue: 28 more quorum queues and their
    exchanges, declared through every node of CELERY_BROKER_URL whenever a worker connects. It
    cannot serve Histo-IA: it routes only through topic or fanout exchanges, and ours is direct,
    so a countdown is kept by the worker as on classic queues (queue_arguments above) and those
    queues stay empty. And it costs: each time a worker connects again after losing its node, it
    tries the dead node over and over (about 17 s here) before it takes any work.
    """
    if settings.CELERY_BROKER_QUEUE_TYPE != "quorum":
        return
    from celery.worker.consumer import Consumer

    class ConsumerWithoutDelayedDelivery(Consumer):
        class Blueprint(Consumer.Blueprint):
            default_steps = [step for step in Consumer.Blueprint.default_steps
                             if not step.endswith(":DelayedDelivery")]

    conf.worker_consumer = ConsumerWithoutDelayedDelivery
