"""The staff monitoring page: workers per queue from the real workers; staff only."""

import time

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from predictions.models import Status
from tests.conftest import wait_for
from tests.factories import PredictionFactory


@pytest.mark.worker
def test_staff_see_each_queue_with_its_worker_and_recent_failures(workers, admin_client, experiment, pipelines):
    cache.clear()
    PredictionFactory(experiment=experiment, pipeline=pipelines["ihc-dab"], status=Status.FAILED,
                      error="Every slide failed; see each slide's reason.", finished_at=timezone.now())
    page = admin_client.get(reverse("predictions:monitoring")).content.decode()
    assert workers.cpu_name in page and workers.gpu_name in page
    assert 'data-queue="cpu"' in page and 'data-queue="gpu"' in page
    assert "No worker answers" not in page
    assert "Every slide failed" in page


def test_lab_members_do_not_see_the_monitoring_page(alice_client):
    assert alice_client.get(reverse("predictions:monitoring")).status_code == 404


@pytest.mark.worker
def test_pages_get_the_last_answer_at_once_and_a_fresh_one_follows(workers):
    """A broadcast waits its whole timeout; a page must not. It gets the previous answer (here a
    worker that has gone away), and a background refresh replaces it with the live workers."""
    from predictions import monitoring

    cache.clear()
    gone = [{"name": "cpu@gone", "queues": ["cpu"], "concurrency": 2, "active": [], "processed": 0,
             "pid": 1, "uptime_s": 1}]
    cache.set(monitoring.WORKERS_CACHE_KEY, {"at": time.time() - 60, "workers": gone}, 120)
    assert monitoring.workers(wait=False) == gone   # answered from the old entry, without waiting

    def refreshed():
        names = {w["name"] for w in (cache.get(monitoring.WORKERS_CACHE_KEY) or {}).get("workers", [])}
        return {workers.cpu_name, workers.gpu_name} <= names and "cpu@gone" not in names
    wait_for(refreshed, timeout=30, message="the background refresh to find the live workers")

    # With no earlier answer at all, the page asks (once) and shows the live workers.
    cache.clear()
    names = {w["name"] for w in monitoring.workers(wait=False)}
    assert {workers.cpu_name, workers.gpu_name} <= names


@pytest.mark.worker
def test_many_threads_asking_at_once_all_get_an_answer(workers):
    """A web process's threads asking for the workers at the same moment (a cold cache after a
    restart) must all get an answer: asked in parallel, their broadcasts exhausted the broker's
    connection pool and every thread waited forever."""
    import threading

    from predictions import monitoring

    cache.clear()
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(monitoring.workers(use_cache=False)), daemon=True)
               for _ in range(12)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert len(answers) == 12, f"{12 - len(answers)} of 12 threads still waiting for the broker"
    for found in answers:
        assert {workers.cpu_name, workers.gpu_name} <= {w["name"] for w in found}


@pytest.mark.django_db
def test_a_fresh_web_process_shows_the_reported_workers_without_waiting_for_a_broadcast(alice_client, monkeypatch):
    """A web process just started has no answer from the workers yet: its first page shows the
    workers as they reported themselves to the database, and asks what they run in the
    background. Here the broadcast never answers until the test lets it: a page that waited for
    it would hang."""
    import threading
    from datetime import timedelta

    from predictions import monitoring
    from predictions.models import WorkerSlots

    cache.clear()
    now = timezone.now()
    WorkerSlots.objects.create(hostname="cpu@reported", queues=["cpu"], processes=2, seen_at=now)
    WorkerSlots.objects.create(hostname="gpu@long-gone", queues=["gpu"], processes=1, seen_at=now - timedelta(hours=1))
    answered = threading.Event()
    monkeypatch.setattr(monitoring, "_ask_workers", lambda timeout: answered.wait(30) and [])
    try:
        page = alice_client.get(reverse("predictions:dashboard_live")).content.decode()
    finally:
        answered.set()
    assert "cpu@reported" in page and "2 processes" in page and "asking…" in page
    assert "gpu@long-gone" not in page
