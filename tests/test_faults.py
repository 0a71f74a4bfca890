"""Faults with several predictions in flight, against real workers, RabbitMQ and PostgreSQL.

Each scenario submits the same three predictions (cpu tile batches, gpu tile batches, several
slides each), injects one fault mid-flight, and waits until every prediction has ended. It then
counts, and prints: submitted, succeeded, failed with a reason, duplicates, lost, stuck, and
figures that differ from an undisturbed run. The only acceptable outcome is every prediction
succeeded, with identical figures and nothing duplicated, lost or stuck.

The stuck-prediction sweep (predictions/maintenance.py) is part of the system under test: beat
runs it every minute in production; here it is called whenever nothing has moved for a while.
"""

import os
import signal
import subprocess
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
from tests.conftest import (CMU_SLIDE, REPO, free_port, healthz_answers, http_login, real_stack_required,
                            wait_for)

pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(not real_stack_required(), reason="faults are injected into the real stack (CI: .ci/run)"),
]

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


@pytest.fixture
def slides(make_slide, demo_model):
    return [make_slide(CMU_SLIDE, f"case-{i}.svs") for i in range(3)]


def submit_round(pipelines, slides):
    return [engine.submit(slides[0].experiment, pipelines[name], slides[:n], params) for name, params, n in ROUND]


def settle(predictions, workers, timeout=360):
    """Wait until every prediction ended; sweep stuck ones as beat would, and start a worker that
    exited again as the deployment's supervisor would (compose: restart: unless-stopped)."""
    ids = [p.pk for p in predictions]
    deadline = time.monotonic() + timeout
    last_progress, last_change = None, time.monotonic()
    while time.monotonic() < deadline:
        state = db_retry(lambda: list(Prediction.objects.filter(pk__in=ids).values_list("status", "done_units")))
        if all(s in ("succeeded", "partial", "failed", "cancelled") for s, _ in state):
            return []
        for kind, proc in list(workers.procs.items()):
            if proc.poll() is not None:
                print(f"\n[faults] the {kind} worker exited ({proc.returncode}); supervisor starts it again")
                workers.procs.pop(kind)
                workers.start(kind)
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


@pytest.fixture
def reference(workers, pipelines, slides):
    """Figures of an undisturbed run (the same slide copied, so one set of figures per pipeline)."""
    predictions = submit_round(pipelines, slides)
    assert settle(predictions, workers) == []
    figures = {}
    for p in Prediction.objects.filter(pk__in=[p.pk for p in predictions]).select_related("pipeline"):
        assert p.status == Status.SUCCEEDED, p.error
        (metrics,) = {str(r.metrics): r.metrics for r in p.runs.all()}.values()  # identical per slide copy
        figures[p.pipeline.name] = metrics
    return figures


def wait_started(task_name, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if TaskResult.objects.filter(task_name=task_name, status="STARTED").exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {task_name} started within {timeout}s")


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_sigkill_worker_mid_batch(kind, workers, pipelines, slides, reference, fault_counts):
    predictions = submit_round(pipelines, slides)
    wait_started(f"predictions.{kind}.tile_batch")
    workers.kill(kind)
    time.sleep(2)
    workers.start(kind)
    settle(predictions, workers)
    assert_clean(counts(f"SIGKILL {kind} worker mid-batch", predictions, reference, fault_counts))


def test_rabbitmq_restart(workers, pipelines, slides, reference, fault_counts):
    predictions = submit_round(pipelines, slides)
    wait_started("predictions.cpu.tile_batch")
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    time.sleep(3)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    settle(predictions, workers)
    assert_clean(counts("RabbitMQ restarted", predictions, reference, fault_counts))


def test_postgresql_restart(workers, pipelines, slides, reference, fault_counts):
    predictions = submit_round(pipelines, slides)
    wait_started("predictions.cpu.tile_batch")
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   check=True, capture_output=True, timeout=120)
    connection.close()
    settle(predictions, workers)
    assert_clean(counts("PostgreSQL restarted", predictions, reference, fault_counts))


def test_web_restart_loses_nothing(workers, pipelines, slides, reference, celery_workers, fault_counts):
    """The web process holds no work: predictions submitted through it go on while it restarts."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(celery_workers.env, PATH=f"{Path(os.sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = ["gunicorn", "histoia.wsgi:application", f"--bind=127.0.0.1:{port}", "--workers=2"]

    def start():
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        wait_for(lambda: healthz_answers(base), timeout=60, message="gunicorn up")
        return proc

    web = start()
    try:
        predictions = submit_round(pipelines, slides)
        os.killpg(web.pid, signal.SIGKILL)  # the web process dies mid-flight
        web.wait(timeout=30)
        web = start()
        http = http_login(base, slides[0].experiment.created_by.username)
        settle(predictions, workers)
        assert http.get(f"{base}/predictions/{predictions[0].pk}/").status_code == 200
    finally:
        os.killpg(web.pid, signal.SIGTERM)
    assert_clean(counts("web process killed and restarted", predictions, reference, fault_counts))
