"""The cpu and gpu queues: routing by name, which worker runs what, and a visible queued state."""

import pytest
from celery import states
from django_celery_results.models import TaskResult

from histoia.celery import app
from tests.conftest import wait_for

pytestmark = pytest.mark.worker


def _finished(task_id):
    return lambda: TaskResult.objects.filter(task_id=task_id, status__in=states.READY_STATES).first()


def test_every_task_is_routed_to_the_cpu_or_gpu_queue():
    app.loader.import_default_modules()
    names = [n for n in app.tasks if not n.startswith("celery.")]
    assert "experiments.cpu.validate_slide" in names and "predictions.gpu.describe_device" in names
    router = app.amqp.router
    for name in names:
        route = router.route({}, name)
        assert route["queue"].name in {"cpu", "gpu"}, name


def test_cpu_task_runs_on_the_cpu_worker_and_gpu_task_on_the_gpu_worker(workers, experiment):
    from experiments.tasks import validate_slide
    from predictions.tasks import describe_device

    cpu = validate_slide.delay(999_999)  # no such slide: the task skips it, but runs
    gpu = describe_device.delay()
    cpu_row = wait_for(_finished(cpu.id), message="cpu task")
    gpu_row = wait_for(_finished(gpu.id), message="gpu task")
    assert cpu_row.status == gpu_row.status == states.SUCCESS
    assert cpu_row.worker == workers.cpu_name
    assert gpu_row.worker == workers.gpu_name
    assert '"device": "cpu"' in gpu_row.result  # no GPU on the test machines


def test_a_queued_task_is_a_visible_row_before_any_worker_takes_it(workers):
    from predictions.tasks import describe_device

    workers.kill("gpu")
    result = describe_device.delay()
    row = TaskResult.objects.get(task_id=result.id)
    assert row.status == states.PENDING
    assert row.task_name == "predictions.gpu.describe_device"

    # Nothing is lost: the task waits in the durable queue and runs once a gpu worker is back.
    workers.start("gpu")
    row = wait_for(_finished(result.id), message="queued gpu task after restart")
    assert row.status == states.SUCCESS and row.worker == workers.gpu_name


@pytest.mark.django_db
def test_a_message_sent_again_under_its_id_keeps_what_its_worker_recorded():
    """The row written at publish never overwrites a worker's: a batch re-sent under its own
    deterministic id (the stuck sweep, a broker that refused it) keeps its first run's outcome
    until the new run reports."""
    from predictions.task_records import record_sent

    headers = {"id": "p1-r1-b0", "task": "predictions.cpu.tile_batch", "argsrepr": "[1, 0]", "kwargsrepr": "{}"}
    record_sent(headers, "cpu")
    row = TaskResult.objects.get(task_id="p1-r1-b0")
    assert (row.status, row.task_name, row.task_args) == (states.PENDING, "predictions.cpu.tile_batch", "[1, 0]")
    TaskResult.objects.filter(pk=row.pk).update(status=states.FAILURE, worker="cpu@host")

    record_sent(headers, "cpu")
    assert TaskResult.objects.filter(task_id="p1-r1-b0").count() == 1
    row.refresh_from_db()
    assert (row.status, row.worker) == (states.FAILURE, "cpu@host")


def test_workers_compute_at_a_lower_priority_than_the_web_process(workers, settings):
    """Saturated workers must not slow the pages: every worker process, pool children included,
    runs at CELERY_WORKER_NICENESS, the web process (this one) at its own."""
    import os
    from pathlib import Path

    def niceness(pid):
        return os.getpriority(os.PRIO_PROCESS, pid)

    for kind in ("cpu", "gpu"):
        main = workers.procs[kind].pid
        children = [int(c) for c in Path(f"/proc/{main}/task/{main}/children").read_text().split()]
        if kind == "cpu":
            assert len(children) == 2, "the prefork pool of two processes"
        for pid in [main, *children]:
            assert niceness(pid) == niceness(os.getpid()) + settings.CELERY_WORKER_NICENESS, (kind, pid)
