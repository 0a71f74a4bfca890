"""A broker node lost: on a three-node RabbitMQ cluster with quorum queues
(CELERY_BROKER_QUEUE_TYPE=quorum, every node in CELERY_BROKER_URL), predictions in flight lose
nothing when the node every process is connected to is killed outright.

Every message goes through the cluster (tests/broker_cluster.py): the predictions are submitted
through the API of a web process (gunicorn) and run by a cpu and a gpu worker, all started with
the cluster's URL. This test process only reads the database: its own Celery app is configured
for the suite's broker, so it sends nothing, and where beat would sweep stuck predictions it
runs the sweep in a process of the cluster too. Node 1 is the first in the URL, so every
process is connected to it, and the queues' leaders are there (they are declared by the first
worker to connect). It is killed while the gpu worker runs a tile batch and the cpu worker
prepares a slide, most of both predictions' steps still to be sent.

The outcome is counted as the other fault scenarios are (tests/faults.py): every prediction
succeeded, each batch of each slide done once, nothing lost or stuck, and the figures of an
undisturbed round on the same cluster. The counts are printed in the run's summary.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.db import connection
from django_celery_results.models import TaskResult

from predictions.models import Prediction, Status
from tests import broker_cluster
from tests.conftest import (
    ARTIFACTS,
    CMU_SLIDE,
    REPO,
    Workers,
    _database_url_for_workers,
    free_port,
    healthz_answers,
    real_stack_required,
    wait_for,
)
from tests.faults import assert_clean, counts, db_retry

pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(not real_stack_required(), reason="started beside the real stack (CI: .ci/run)"),
]

ROUND = [  # pipeline, parameters, number of slides: a cpu and a gpu prediction, small
    ("ihc-dab", {"tile_size": 64}, 1),
    ("tissue-classifier", {"min_tissue": 0.1}, 2),
]
FINAL = (Status.SUCCEEDED, Status.PARTIAL, Status.FAILED, Status.CANCELLED)
# Run in a process of the cluster where beat would run the stuck sweep (tests/faults.py settle()).
SWEEP = ("from datetime import timedelta; from predictions import maintenance; "
         "maintenance.sweep_stuck(stale_after=timedelta(seconds=15))")


class ClusterWorkers(Workers):
    """The cluster's cpu and gpu workers, named apart from the session's (which may be running
    too, on the suite's broker, and report themselves to the same database)."""

    def __init__(self, env, log_dir):
        super().__init__(env, log_dir)
        self.cpu_name, self.gpu_name = f"cpu@cluster{os.getpid()}", f"gpu@cluster{os.getpid()}"

    def log(self, kind) -> Path:
        return self.log_dir / f"worker-{kind}.log"


@pytest.fixture
def cluster():
    ok, why = broker_cluster.available()
    if not ok:
        pytest.fail(f"no RabbitMQ cluster can be started here: {why}")
    cluster = broker_cluster.BrokerCluster()
    try:
        cluster.start()
        print(f"\n[broker cluster] {cluster.size} nodes started and clustered in {cluster.started_in:.1f} s")
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def cluster_env(cluster, transactional_db, settings) -> dict:
    """The environment of every process of the cluster: this test's database and media, the
    cluster's broker and quorum queues."""
    return dict(
        os.environ,
        DATABASE_URL=_database_url_for_workers(),
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        SLIDE_IMPORT_ROOT="",
        DJANGO_SETTINGS_MODULE="histoia.settings",
        DEBUG="1",
        PYTHONUNBUFFERED="1",
        CELERY_BROKER_URL=cluster.url,
        CELERY_BROKER_QUEUE_TYPE="quorum",
        # Both rounds cut each slide by the pipelines' own sizing (up to 20 batches), rather
        # than the second into a few larger batches once the first has measured how fast they
        # run: more steps are sent after the node goes.
        HISTOIA_MIN_BATCH_SECONDS="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )


@pytest.fixture
def cluster_workers(cluster_env):
    log_dir = ARTIFACTS / "broker-cluster"
    log_dir.mkdir(parents=True, exist_ok=True)
    with ClusterWorkers(cluster_env, log_dir).running() as workers:
        yield workers


@pytest.fixture
def cluster_web(cluster_env):
    """A web process of the cluster: its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web = subprocess.Popen(["gunicorn", "histoia.wsgi:application", f"--bind=127.0.0.1:{port}", "--workers=1",
                            "--threads=2"], cwd=REPO, env=cluster_env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: healthz_answers(base), timeout=60, message="gunicorn up")
        yield base
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)


def submit_round(base: str, user, slides) -> list[Prediction]:
    """The round, submitted through the web process's API as a script would."""
    from rest_framework.authtoken.models import Token

    headers = {"Authorization": f"Token {Token.objects.get_or_create(user=user)[0].key}"}
    ids = []
    for name, params, n in ROUND:
        response = requests.post(f"{base}/api/v1/predictions/", headers=headers, timeout=30, json={
            "experiment": slides[0].experiment_id, "pipeline": name, "slides": [s.pk for s in slides[:n]],
            "params": params})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return list(Prediction.objects.filter(pk__in=ids))


def settle(predictions, workers, env, timeout=150.0) -> int:
    """Wait until every prediction ended, as tests/faults.py settle() does but sending nothing
    from this process; returns how many stuck sweeps were needed."""
    rows = Prediction.objects.filter(pk__in=[p.pk for p in predictions])
    deadline = time.monotonic() + timeout
    last_progress, last_change, sweeps = None, time.monotonic(), 0
    while time.monotonic() < deadline:
        state = db_retry(lambda: list(rows.values_list("status", "done_units")))
        if all(status in FINAL for status, _ in state):
            return sweeps
        workers.restart_exited()
        if state != last_progress:
            last_progress, last_change = state, time.monotonic()
        elif time.monotonic() - last_change > 20:
            print("\n[broker cluster] nothing moved for 20 s: the stuck sweep runs, as beat would")
            subprocess.run([sys.executable, "manage.py", "shell", "-c", SWEEP], cwd=REPO, env=env, check=True,
                           capture_output=True, timeout=60)
            sweeps += 1
            last_change = time.monotonic()
        time.sleep(0.5)
    return sweeps


def figures(predictions) -> dict:
    """One set of figures per pipeline (the slides are copies of one slide)."""
    found = {}
    for p in Prediction.objects.filter(pk__in=[p.pk for p in predictions]).select_related("pipeline"):
        assert p.status == Status.SUCCEEDED, p.error
        (metrics,) = {str(r.metrics): r.metrics for r in p.runs.all()}.values()
        found[p.pipeline.name] = metrics
    return found


def test_broker_node_killed_mid_prediction_loses_nothing(
        cluster, cluster_env, cluster_workers, cluster_web, alice, make_slide, pipelines, demo_model,
        fault_counts):
    slides = [make_slide(CMU_SLIDE, f"case-{i}.svs") for i in range(2)]

    # An undisturbed round on the same cluster: the figures every slide must get.
    undisturbed = submit_round(cluster_web, alice, slides)
    assert settle(undisturbed, cluster_workers, cluster_env) == 0
    reference = figures(undisturbed)

    # The work queues are quorum queues, with a replica on each node.
    queues = cluster.queues()
    for name in ("cpu", "gpu"):
        assert queues[name]["type"] == "quorum", queues
        assert all(node.name in queues[name]["members"] for node in cluster.nodes), queues
    print(f"\n[broker cluster] leaders: cpu on {queues['cpu']['leader']}, gpu on {queues['gpu']['leader']}")

    predictions = submit_round(cluster_web, alice, slides)
    # The first gpu batch (the model loading) runs while the cpu worker prepares the ihc-dab
    # slide: both predictions are mid-flight, most of their steps still to be sent.
    gpu_batches = TaskResult.objects.filter(task_name="predictions.gpu.tile_batch")
    wait_for(lambda: gpu_batches.filter(status="STARTED").exists(), timeout=120, interval=0.05,
             message="a gpu tile batch running")
    logged = {kind: cluster_workers.log(kind).stat().st_size for kind in ("cpu", "gpu")}
    cluster.kill(1)
    killed_at = time.monotonic()
    running = sorted(TaskResult.objects.filter(status="STARTED").values_list("task_id", flat=True))
    done = {p.pipeline.name: f"{p.done_units}/{p.total_units}" for p in
            Prediction.objects.filter(pk__in=[p.pk for p in predictions]).select_related("pipeline")}
    sweeps = settle(predictions, cluster_workers, cluster_env)
    print(f"\n[broker cluster] node 1 killed while {', '.join(running)} ran (units done: {done}); "
          f"the round ended {time.monotonic() - killed_at:.1f} s later, with {sweeps} stuck sweep(s)")
    connection.close()

    # Each worker carried on through another node, and the queues are led from there now.
    for kind, offset in logged.items():
        log = cluster_workers.log(kind).read_bytes()[offset:].decode(errors="replace")
        others = [f"Connected to amqp://guest:**@127.0.0.1:{node.port}//" for node in cluster.nodes[1:]]
        assert any(line in log for line in others), f"the {kind} worker did not connect to another node"
    queues = cluster.queues(2)
    print(f"[broker cluster] leaders now: cpu on {queues['cpu']['leader']}, gpu on {queues['gpu']['leader']}")
    assert_clean(counts("RabbitMQ cluster node killed (quorum queues)", predictions, reference, fault_counts))
