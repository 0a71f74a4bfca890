"""Celery tasks of the predictions app: thin wrappers around engine.py.

Task names carry their queue (predictions.cpu.* / predictions.gpu.*): histoia/celery.py routes
by name, so a task cannot land on the wrong queue by accident.
"""

import platform

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import engine

# A step that meets a database outage is retried (with backoff) rather than failing the slide.
RETRY = {"autoretry_for": (OperationalError, InterfaceError), "retry_backoff": 2,
         "retry_backoff_max": 60, "max_retries": 20}


@shared_task(name="predictions.cpu.start_prediction", **RETRY)
def start_prediction(prediction_id: int) -> None:
    engine.start(prediction_id)


@shared_task(name="predictions.cpu.prepare_slide", **RETRY)
def prepare_slide(run_id: int) -> None:
    engine.prepare(run_id)


@shared_task(name="predictions.cpu.tile_batch", bind=True, **RETRY)
def cpu_tile_batch(self, run_id: int, index: int) -> None:
    engine.run_batch(run_id, index, "cpu", self.request.hostname)


@shared_task(name="predictions.gpu.tile_batch", bind=True, **RETRY)
def gpu_tile_batch(self, run_id: int, index: int) -> None:
    engine.run_batch(run_id, index, "gpu", self.request.hostname)


@shared_task(name="predictions.cpu.aggregate_slide", **RETRY)
def aggregate_slide(run_id: int) -> None:
    engine.aggregate(run_id)


@shared_task(name="predictions.gpu.describe_device")
def describe_device() -> dict:
    """What the gpu worker computes on: shown on the monitoring page and used by the tests."""
    import torch

    from .imaging.inference import pick_device

    device = pick_device()
    return {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
    }


# -- scheduled work (celery beat; see predictions/schedules.py and predictions/maintenance.py) -----
def schedule_name(request) -> str:
    """The PeriodicTask's name, which django-celery-beat sends in the message headers."""
    name = getattr(request, "periodic_task_name", None) or (getattr(request, "headers", None) or {}).get(
        "periodic_task_name")
    return name or "run by hand"


@shared_task(name="predictions.cpu.rerun_pipeline", bind=True)
def rerun_pipeline(self, pipeline: str, experiments: list, params: dict | None = None,
                   priority: str = "normal") -> dict:
    """Re-run pipeline `pipeline` (by name) on the experiments with these ids, all ready slides."""
    from . import schedules

    return schedules.rerun(pipeline, experiments, params, priority, schedule_name=schedule_name(self.request))


@shared_task(name="predictions.cpu.reanalyse_stale", bind=True)
def reanalyse_stale(self, pipeline: str, labs: list | None = None, priority: str = "normal") -> dict:
    """Re-analyse experiments whose latest result of `pipeline` used an older version or model."""
    from . import schedules

    return schedules.reanalyse_stale(pipeline, labs, priority, schedule_name=schedule_name(self.request))


@shared_task(name="predictions.cpu.expire_task_results")
def expire_task_results() -> int:
    from . import maintenance

    return maintenance.expire_task_results()


@shared_task(name="predictions.cpu.sweep_stuck_predictions")
def sweep_stuck_predictions() -> dict:
    from . import maintenance

    summary = maintenance.sweep_stuck()
    return {"requeued": {str(k): v for k, v in summary["requeued"].items()}, "failed": summary["failed"],
            "waiting": summary["waiting"]}


@shared_task(name="predictions.cpu.resend_queued_predictions")
def resend_queued_predictions() -> list:
    from . import maintenance

    return maintenance.resend_queued()
