"""The fault suites' shared machinery (tests/test_faults.py on one host, tests/test_hosts.py
across hosts): the round of predictions every scenario submits, waiting for it to settle as
production would (beat's stuck sweep, a supervisor restarting exited workers), and the counts
every scenario prints: submitted, succeeded, failed with a reason, duplicates, lost, stuck, and
figures that differ from an undisturbed run. The only acceptable outcome is every prediction
succeeded, with identical figures and nothing duplicated, lost or stuck.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.db.utils import InterfaceError, OperationalError
from django_celery_results.models import TaskResult

from predictions import engine, maintenance
from predictions.models import BatchResult, Prediction, Status
from predictions.pipelines import Plan
from tests.conftest import REPO, free_port, healthz_answers, wait_for

# The figures of an undisturbed round, computed once per test run (the same slides and
# parameters always give the same figures: that is what every scenario checks).
REFERENCE = pytest.StashKey[dict]()

ROUND = [  # pipeline, parameters, number of slides
    ("nuclei-density", {"tile_size": 128}, 2),
    ("tissue-classifier", {"min_tissue": 0.1}, 3),
    ("ihc-dab", {"tile_size": 256}, 2),
]


def db_retry(fn):
    """Run a query, reconnecting while PostgreSQL restarts."""
    for _ in range(60):
        try:
            return fn()
        except (OperationalError, InterfaceError):
            connection.close()
            time.sleep(1)
    return fn()


def submit_round(pipelines, slides):
    return [engine.submit(slides[0].experiment, pipelines[name], slides[:n], params) for name, params, n in ROUND]


def settle(predictions, supervise=None, timeout=360):
    """Wait until every prediction ended; sweep stuck ones as beat would, and call `supervise`
    every second, to start a worker that exited again as the deployment's supervisor would
    (compose: restart: unless-stopped)."""
    ids = [p.pk for p in predictions]
    deadline = time.monotonic() + timeout
    last_progress, last_change = None, time.monotonic()
    while time.monotonic() < deadline:
        state = db_retry(lambda: list(Prediction.objects.filter(pk__in=ids).values_list("status", "done_units")))
        if all(s in ("succeeded", "partial", "failed", "cancelled") for s, _ in state):
            return []
        if supervise:
            supervise()
        if state != last_progress:
            last_progress, last_change = state, time.monotonic()
        elif time.monotonic() - last_change > 20:
            db_retry(lambda: maintenance.sweep_stuck(stale_after=timedelta(seconds=15)))
            last_change = time.monotonic()
        time.sleep(1)
    return list(Prediction.objects.filter(pk__in=ids).exclude(
        status__in=["succeeded", "partial", "failed", "cancelled"]))


def counts(label, predictions, reference, summary: list):
    """Count the outcome of one scenario, print it, and keep it for the run's closing summary."""
    connection.close()
    rows = {"submitted": len(predictions), "succeeded": 0, "failed_with_reason": 0, "failed_without_reason": 0,
            "duplicates": 0, "lost": 0, "stuck": 0, "figures_differ": 0}
    for p in Prediction.objects.filter(pk__in=[p.pk for p in predictions]).select_related("pipeline"):
        if p.status == Status.SUCCEEDED:
            rows["succeeded"] += 1
        elif p.status in (Status.FAILED, Status.PARTIAL):
            rows["failed_with_reason" if p.error else "failed_without_reason"] += 1
        else:
            rows["stuck"] += 1
        for run in p.runs.all():
            planned = len(Plan.from_json(run.plan).batches()) if run.plan else 0
            indices = list(BatchResult.objects.filter(run=run).values_list("index", flat=True))
            rows["duplicates"] += len(indices) - len(set(indices))
            if run.status == Status.SUCCEEDED:
                if sorted(set(indices)) != list(range(planned)) or run.metrics is None:
                    rows["lost"] += 1
                elif run.metrics != reference[p.pipeline.name]:
                    rows["figures_differ"] += 1
    line = f"{label}: " + ", ".join(f"{k}={v}" for k, v in rows.items())
    print(f"\n[faults] {line}")
    summary.append(line)
    return rows


def assert_clean(rows):
    assert rows["succeeded"] == rows["submitted"], rows
    assert rows["duplicates"] == rows["lost"] == rows["stuck"] == rows["figures_differ"] == 0, rows


def reference_figures(request, pipelines, slides, workers) -> dict:
    """Figures of an undisturbed round on the session's workers, one set per pipeline (the slides
    are copies of one slide), computed by the first scenario that needs them."""
    figures = request.config.stash.get(REFERENCE, None)
    if figures is None:
        predictions = submit_round(pipelines, slides)
        assert settle(predictions, workers.restart_exited) == []
        figures = {}
        for p in Prediction.objects.filter(pk__in=[p.pk for p in predictions]).select_related("pipeline"):
            assert p.status == Status.SUCCEEDED, p.error
            (metrics,) = {str(r.metrics): r.metrics for r in p.runs.all()}.values()  # identical per copy
            figures[p.pipeline.name] = metrics
        request.config.stash[REFERENCE] = figures
    return figures


def wait_started(task_name, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if TaskResult.objects.filter(task_name=task_name, status="STARTED").exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {task_name} started within {timeout}s")


class WebProcess:
    """A web process (gunicorn, as in docker/) on this host, that a scenario kills and starts
    again; stopped when the `with` block ends."""

    def __init__(self, env: dict):
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        self.command = ["gunicorn", "histoia.wsgi:application", f"--bind=127.0.0.1:{port}", "--workers=2"]
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: healthz_answers(self.base), timeout=60, message="gunicorn up")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
