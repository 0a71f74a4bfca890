"""Who is working and how much is waiting: Celery workers and the depth of the cpu/gpu queues.

Used by the API (/api/v1/workers/), the pages and the stuck-prediction sweep. Every call is
bounded: the broadcast to workers waits at most `timeout` seconds (one wait for all three
questions, asked at once) and its answer is cached for a few seconds in Django's cache, so a
page polling every second never queues broadcasts; pages and the API never wait for one once
the process has had a first answer (see workers(wait=False)).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from histoia.queues import QUEUE_NAMES

log = logging.getLogger(__name__)

WORKERS_CACHE_KEY = "histoia:monitoring:workers"
DEPTHS_CACHE_KEY = "histoia:monitoring:queue-depths"
WORKERS_CACHE_SECONDS = 5
WORKERS_KEEP_SECONDS = 120     # an older answer is not shown: the page waits for a new one
DEPTHS_CACHE_SECONDS = 2


def workers(timeout: float = 1.0, use_cache: bool = True, wait: bool = True) -> list[dict]:
    """The live workers: name, queues, pool size, tasks running now. [] when none answer.

    Each entry: {"name", "queues": [..], "concurrency", "active": [{"id", "name", "args",
    "started_at", "worker_pid"}], "tasks_known", "processed", "pid", "uptime_s"}.

    A broadcast waits its whole timeout (a busy solo gpu worker answers only between two
    tasks), so pages pass wait=False: they get the last answer at once, however old (up to
    WORKERS_KEEP_SECONDS), while one background thread of the process asks again. A process
    with no answer yet (just started) shows the workers as they reported themselves to the
    database (reported()), their tasks not known yet; it waits for the broadcast only when no
    worker has reported either.
    """
    if use_cache:
        cached = cache.get(WORKERS_CACHE_KEY)
        if cached is not None:
            if time.time() - cached["at"] < WORKERS_CACHE_SECONDS:
                return cached["workers"]
            if not wait:
                _refresh_in_background(timeout)
                return cached["workers"]
        elif not wait:
            known = reported()
            if known:
                _refresh_in_background(timeout)
                return known
    return _refresh(timeout)


def reported() -> list[dict]:
    """The workers heard from recently as they report themselves (WorkerSlots: when they start
    and every minute), in workers()' shape; what they run is not known yet ("tasks_known")."""
    from .dispatch import WORKER_SILENT_AFTER
    from .models import WorkerSlots

    rows = WorkerSlots.objects.filter(seen_at__gte=timezone.now() - WORKER_SILENT_AFTER).order_by("hostname")
    return [{"name": w.hostname, "queues": sorted(w.queues or []), "concurrency": w.processes, "active": [],
             "tasks_known": False, "processed": None, "pid": None, "uptime_s": None} for w in rows]


# One broadcast at a time per process. Each of the three questions holds a connection of the
# broker pool and takes a second one to publish (kombu's producer pool draws from the same
# pool), so a few request threads asking at once exhausted the pool (BROKER_POOL_LIMIT, 10) and
# every one of them waited for a connection forever: the web process stopped answering.
_asking = threading.Lock()
_refreshing = threading.Lock()


def _refresh(timeout: float) -> list[dict]:
    wanted_after = time.time()
    with _asking:
        cached = cache.get(WORKERS_CACHE_KEY)
        if cached is not None and cached["at"] >= wanted_after:
            return cached["workers"]  # another thread asked while this one waited its turn
        result = _ask_workers(timeout)
        cache.set(WORKERS_CACHE_KEY, {"at": time.time(), "workers": result}, WORKERS_KEEP_SECONDS)
        return result


def _refresh_in_background(timeout: float) -> None:
    if not _refreshing.acquire(blocking=False):
        return  # this process is already asking

    def run():
        try:
            _refresh(timeout)
        except Exception:
            log.warning("could not refresh the list of workers", exc_info=True)
        finally:
            _refreshing.release()

    threading.Thread(target=run, name="histoia-workers-refresh", daemon=True).start()


def _ask_workers(timeout: float) -> list[dict]:
    inspect = current_app.control.inspect(timeout=timeout)
    questions = {"active": inspect.active, "stats": inspect.stats, "queues": inspect.active_queues}
    answers = {}
    # Asked at once: each broadcast waits its whole timeout for replies, so in sequence they
    # would add up.
    with ThreadPoolExecutor(max_workers=len(questions)) as pool:
        futures = {key: pool.submit(_safe, ask) for key, ask in questions.items()}
        for key, future in futures.items():
            answers[key] = future.result() or {}
    names = sorted(set(answers["active"]) | set(answers["stats"]) | set(answers["queues"]))
    out = []
    for name in names:
        stats = answers["stats"].get(name) or {}
        pool = stats.get("pool") or {}
        out.append({
            "name": name,
            "queues": sorted(q.get("name", "") for q in answers["queues"].get(name) or []),
            "concurrency": pool.get("max-concurrency"),
            "active": [_task(t) for t in answers["active"].get(name) or []],
            "tasks_known": True,
            "processed": sum((stats.get("total") or {}).values()),
            "pid": stats.get("pid"),
            "uptime_s": stats.get("uptime"),
        })
    return out


def _safe(ask):
    try:
        return ask()
    except Exception:  # the broker is away: no worker can be reached either
        log.warning("could not reach the workers", exc_info=True)
        return None


def _task(task: dict) -> dict:
    started = task.get("time_start")
    return {
        "id": task.get("id"),
        "name": task.get("name") or task.get("type"),
        "args": task.get("args"),
        "started_at": datetime.fromtimestamp(started, tz=dt_timezone.utc).isoformat() if started else None,
        "worker_pid": task.get("worker_pid"),
    }


def active_task_ids(timeout: float = 1.0, use_cache: bool = True) -> set[str] | None:
    """Ids of tasks running on a live worker now; None when no worker could be asked."""
    found = workers(timeout=timeout, use_cache=use_cache)
    if not found:
        return None
    return {task["id"] for worker in found for task in worker["active"] if task["id"]}


def cached_concurrency(queue: str) -> int | None:
    """Worker processes serving `queue`, from the last cached answer only (never asks)."""
    found = (cache.get(WORKERS_CACHE_KEY) or {}).get("workers")
    if not found:
        return None
    total = sum(w["concurrency"] or 1 for w in found if queue in w["queues"])
    return total or None


def queue_depths(use_cache: bool = True) -> dict[str, int | None]:
    """Messages waiting in each queue ({"cpu": n, "gpu": n}); None where it cannot be told.

    Messages a worker has already taken (running or prefetched) are not counted.
    """
    if use_cache:
        cached = cache.get(DEPTHS_CACHE_KEY)
        if cached is not None:
            return cached
    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        depths = _filesystem_depths()
    elif settings.CELERY_BROKER_IS_AMQP:
        depths = _amqp_depths()
    else:
        depths = dict.fromkeys(QUEUE_NAMES)
    cache.set(DEPTHS_CACHE_KEY, depths, DEPTHS_CACHE_SECONDS)
    return depths


def _filesystem_depths() -> dict[str, int | None]:
    # kombu's filesystem transport keeps one file per message, named <ms>_<uuid>.<queue>.msg.
    folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
    counts = dict.fromkeys(QUEUE_NAMES, 0)
    try:
        for entry in folder.iterdir():
            queue = entry.name.partition(".")[2].removesuffix(".msg")
            if queue in counts:
                counts[queue] += 1
    except OSError:
        return dict.fromkeys(QUEUE_NAMES)
    return counts


def _amqp_depths() -> dict[str, int | None]:
    depths = dict.fromkeys(QUEUE_NAMES)
    try:
        with current_app.connection_for_read() as conn:
            # A cluster's nodes (CELERY_BROKER_URL lists them) are tried once each, in turn, so
            # a node that is down leaves the question to the next; a single broker gets two tries.
            conn.ensure_connection(max_retries=max(len(conn.alt) - 1, 1), timeout=2)
            channel = conn.default_channel
            for name in QUEUE_NAMES:
                try:
                    depths[name] = channel.queue_declare(queue=name, passive=True).message_count
                except Exception:  # not declared yet: no worker ever started on it
                    log.info("queue %s not found on the broker", name)
                    channel = conn.channel()  # a failed passive declare closes the channel
    except Exception:
        log.warning("could not read queue depths from the broker", exc_info=True)
    return depths


def overview(timeout: float = 1.0, wait: bool = False) -> dict:
    """Workers and queues together, as the API and the monitoring page show them."""
    found = workers(timeout=timeout, wait=wait)
    depths = queue_depths()
    queues = []
    for name in QUEUE_NAMES:
        serving = [w for w in found if name in w["queues"]]
        queues.append({
            "name": name,
            "messages": depths.get(name),
            "workers": len(serving),
            "concurrency": sum(w["concurrency"] or 1 for w in serving),
            "running": sum(len(w["active"]) for w in serving),
        })
    return {"workers": found, "queues": queues, "checked_at": timezone.now()}
