"""Faults with several predictions in flight, against real workers, RabbitMQ and PostgreSQL.

Each scenario submits the same three predictions (cpu tile batches, gpu tile batches, several
slides each), injects one fault mid-flight, and waits until every prediction has ended. It then
counts, and prints: submitted, succeeded, failed with a reason, duplicates, lost, stuck, and
figures that differ from an undisturbed run. The only acceptable outcome is every prediction
succeeded, with identical figures and nothing duplicated, lost or stuck.

The stuck-prediction sweep (predictions/maintenance.py) is part of the system under test: beat
runs it every minute in production; here it is called whenever nothing has moved for a while.
The shared machinery (the round, settling, counting) is in tests/faults.py; the same faults
across hosts are in tests/test_hosts.py.
"""

import os
import subprocess
import time

import pytest
from django.db import connection

from tests.conftest import http_login, real_stack_required
from tests.faults import WebProcess, assert_clean, counts, settle, submit_round, wait_started

pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(not real_stack_required(), reason="faults are injected into the real stack (CI: .ci/run)"),
]


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_sigkill_worker_mid_batch(kind, workers, pipelines, slides, reference, fault_counts):
    predictions = submit_round(pipelines, slides)
    wait_started(f"predictions.{kind}.tile_batch")
    workers.kill(kind)
    time.sleep(2)
    workers.start(kind)
    settle(predictions, workers.restart_exited)
    assert_clean(counts(f"SIGKILL {kind} worker mid-batch", predictions, reference, fault_counts))


def test_rabbitmq_restart(workers, pipelines, slides, reference, fault_counts):
    predictions = submit_round(pipelines, slides)
    wait_started("predictions.cpu.tile_batch")
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    time.sleep(3)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    settle(predictions, workers.restart_exited)
    assert_clean(counts("RabbitMQ restarted", predictions, reference, fault_counts))


def test_postgresql_restart(workers, pipelines, slides, reference, fault_counts):
    predictions = submit_round(pipelines, slides)
    wait_started("predictions.cpu.tile_batch")
    version = max(os.listdir("/etc/postgresql"))
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   check=True, capture_output=True, timeout=120)
    connection.close()
    settle(predictions, workers.restart_exited)
    assert_clean(counts("PostgreSQL restarted", predictions, reference, fault_counts))


def test_web_restart_loses_nothing(workers, pipelines, slides, reference, celery_workers, fault_counts):
    """The web process holds no work: predictions submitted through it go on while it restarts."""
    with WebProcess(celery_workers.env) as web:
        predictions = submit_round(pipelines, slides)
        web.kill()   # the web process dies mid-flight
        web.start()
        http = http_login(web.base, slides[0].experiment.created_by.username)
        settle(predictions, workers.restart_exited)
        assert http.get(f"{web.base}/predictions/{predictions[0].pk}/").status_code == 200
    assert_clean(counts("web process killed and restarted", predictions, reference, fault_counts))
