"""Faults across hosts, with a round of predictions in flight (counted as in tests/faults.py).

The worker hosts are network namespaces on this machine (tests/hosts.py), each with its own
address and host name: the web side (this test process), PostgreSQL and RabbitMQ stay on the
main host, and the workers run on a cpu host and a gpu host that reach the main host only over
their links. The session's own workers are stopped for these tests, so every step runs on a
worker host. Each scenario is a fault a lab with a GPU box under a desk and a compute server
meets: a host gone, a link down, a host much slower than the other.

Heartbeats between the workers and RabbitMQ are off (histoia/settings.py: the gpu worker's solo
pool cannot answer them mid-batch), so neither side drops a connection on its own: a host gone
without a word keeps its messages in RabbitMQ's hands until the connection dies, and its steps
are sent again by the stuck sweep (beat's job, called here whenever nothing moves for a while)
and run by the hosts still there.
"""

import os
import subprocess
import sys
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.utils import timezone

from histoia.celery import app
from predictions import queueing
from predictions.models import BatchResult, Prediction
from tests import hosts
from tests.conftest import ARTIFACTS, REPO, http_login, real_stack_required, wait_for
from tests.faults import WebProcess, assert_clean, counts, settle, submit_round, wait_started

available, why = hosts.available()
pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(not real_stack_required(), reason="faults are injected into the real stack (CI: .ci/run)"),
    pytest.mark.skipif(not available, reason=why),
]

# Longer than any broker heartbeat a deployment would set (RabbitMQ's default is 60 s).
PARTITION_SECONDS = 90


def on_main_host(url: str) -> str:
    """The same service URL, reached at the main host's link address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(host, hosts.MAIN_ADDRESS, 1)))


class Lab:
    """The worker hosts of one scenario and the workers running on them."""

    def __init__(self, env: dict):
        self.media = env["MEDIA_ROOT"]
        self.network = hosts.HostNetwork(shared=(self.media,)).create()
        self.env = dict(env, DATABASE_URL=on_main_host(env["DATABASE_URL"]),
                        CELERY_BROKER_URL=on_main_host(env["CELERY_BROKER_URL"]))
        self.workers: dict[str, subprocess.Popen] = {}

    def host(self, name: str, kind: str, processes: int = 1) -> hosts.Host:
        """A new worker host running one worker for `kind` (the cpu or gpu queue)."""
        host = self.network.add(name)
        pool = ["-P", "prefork", "-c", str(processes)] if kind == "cpu" else ["-P", "solo", "-c", "1"]
        log = ARTIFACTS / f"host-{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as fh:
            proc = host.popen([sys.executable, "-m", "celery", "-A", "histoia", "worker", "--loglevel=INFO",
                               "--without-mingle", "--without-gossip", "-Q", kind, *pool,
                               "-n", f"{kind}@{host.hostname}"],
                              cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        wait_for(lambda: b" ready." in log.read_bytes()[offset:] or proc.poll() is not None,
                 timeout=90, message=f"the worker on {name} to start (see {log})")
        assert proc.poll() is None, f"the worker on {name} exited at start; see {log}"
        # It reaches the media through its host's mount, as over NFS; the main host has none.
        assert self.media in host.mount_points(proc.pid) and self.media not in host.mount_points(os.getpid())
        self.workers[name] = proc
        return host

    def alive(self, name: str) -> bool:
        return self.workers[name].poll() is None

    def remove(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.kill()
        self.network.remove()
        for proc in self.workers.values():
            proc.wait(timeout=30)


@pytest.fixture
def lab(celery_workers, reference, fault_counts):
    """Worker hosts for one scenario; the session's workers stop meanwhile (the `workers`
    fixture starts them again for the next test that needs them)."""
    celery_workers.stop_all()
    lab = Lab(celery_workers.env)
    try:
        yield lab
    finally:
        lab.remove()
        # A vanished host's messages went back to the queues when its connections closed with
        # the port forwards: they name rows of this test, which the next one will not have.
        time.sleep(1)
        app.control.purge()


def test_a_worker_host_lost_mid_batch_then_a_replacement_joins(lab, pipelines, slides, reference, fault_counts):
    lab.host("cpu-1", "cpu", processes=2)
    lab.host("gpu-1", "gpu")
    predictions = submit_round(pipelines, slides)
    wait_started("predictions.cpu.tile_batch")
    lab.network.hosts["cpu-1"].lose()     # a power cut: no connection closes, nothing says goodbye
    lab.network.drop("cpu-1")
    time.sleep(5)
    lab.host("cpu-2", "cpu", processes=2)   # the replacement joins
    settle(predictions)
    assert_clean(counts("worker host lost, replacement joined", predictions, reference, fault_counts))


def test_a_partitioned_worker_host_carries_on_once_its_link_is_back(lab, pipelines, slides, reference,
                                                                   fault_counts):
    lab.host("cpu-1", "cpu", processes=2)
    lab.host("gpu-1", "gpu")
    predictions = submit_round(pipelines, slides)
    wait_started("predictions.cpu.tile_batch")
    cpu = lab.network.hosts["cpu-1"]
    cpu.partition()
    time.sleep(PARTITION_SECONDS)
    cpu.heal()
    settle(predictions)
    # The same worker finished the work, with nobody restarting it, and nothing was doubled.
    assert lab.alive("cpu-1") and lab.alive("gpu-1")
    assert_clean(counts(f"link of the cpu host down for {PARTITION_SECONDS} s", predictions, reference,
                        fault_counts))


def test_a_slow_host_beside_a_fast_one_holds_nothing_up(lab, pipelines, slides, reference, fault_counts):
    lab.host("cpu-fast", "cpu")
    lab.host("cpu-slow", "cpu").slow(share_of_a_core=0.2)
    lab.host("gpu-1", "gpu")
    predictions = submit_round(pipelines, slides)
    # Once the slow host has finished a batch, its speed is part of what the ETAs are made of:
    # what the dashboard then says of the round's end is checked against when it really ends.
    wait_for(lambda: BatchResult.objects.filter(run__prediction__in=predictions, worker__contains="cpu-slow")
             .exists(), timeout=240, message="a batch done on the slow host")
    asked_at = timezone.now()
    # Only estimates made from the pipeline's measured history: a pipeline with none yet (ihc-dab,
    # still queued behind nuclei-density) is shown with a deliberately slow default, marked so.
    etas = {e["pk"]: e["eta_seconds"] for e in queueing.waiting(load=False)
            if e["pk"] in {p.pk for p in predictions} and not e["estimated_without_history"]}
    settle(predictions)
    rows = counts("one cpu host at a fifth of a core, one not", predictions, reference, fault_counts)
    assert_clean(rows)
    ended = dict(Prediction.objects.filter(pk__in=etas).values_list("pk", "finished_at"))
    took = {pk: (ended[pk] - asked_at).total_seconds() for pk in etas}
    line = "slow host, ETA against the real end: " + ", ".join(
        f"{p.pipeline.name} {etas[p.pk]} s / {took[p.pk]:.0f} s" for p in predictions if p.pk in etas)
    print(f"\n[faults] {line}")
    fault_counts.append(line)
    assert etas and all(0.5 <= etas[pk] / max(took[pk], 1) <= 2 for pk in etas), line


def test_the_web_host_restarted_while_the_worker_hosts_work(lab, celery_workers, pipelines, slides, reference,
                                                            fault_counts):
    lab.host("cpu-1", "cpu", processes=2)
    lab.host("gpu-1", "gpu")
    with WebProcess(celery_workers.env) as web:   # on the main host
        predictions = submit_round(pipelines, slides)
        wait_started("predictions.cpu.tile_batch")
        web.kill()
        web.start()
        http = http_login(web.base, slides[0].experiment.created_by.username)
        settle(predictions)
        assert http.get(f"{web.base}/predictions/{predictions[0].pk}/").status_code == 200
    assert_clean(counts("web host restarted, worker hosts working", predictions, reference, fault_counts))
