"""Scheduled re-analyses: which experiments to run again, and submitting them.

Plain functions over the ORM; the beat tasks in tasks.py (predictions.cpu.rerun_pipeline and
predictions.cpu.reanalyse_stale) are thin wrappers. Both tasks return a summary (what was
submitted, what was skipped and why) that admins read in the task results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db.models import OuterRef, Q, Subquery

from experiments.models import Experiment, Lab, Slide

from . import engine, services
from .models import Pipeline, Prediction, RegisteredModel, Status
from .versions import version_key

log = logging.getLogger(__name__)

RESULT_STATES = (Status.SUCCEEDED, Status.PARTIAL)
ACTIVE_STATES = (Status.QUEUED, Status.RUNNING)


def current_model(pipeline: Pipeline) -> RegisteredModel | None:
    return engine.current_model(pipeline.model_name) if pipeline.model_name else None


@dataclass
class StaleExperiment:
    experiment: Experiment
    latest: Prediction          # the experiment's latest result of the pipeline
    reasons: list[str] = field(default_factory=list)


def stale_experiments(pipeline_name: str, labs=None) -> list[StaleExperiment]:
    """Experiments whose latest result of the pipeline was made by an older pipeline version or
    an older model than the current ones.

    The latest result is the newest succeeded (or partly failed) prediction of any version of
    the pipeline; experiments never analysed with it are not selected. An experiment that already
    has a queued or running prediction with the current version and model is left out, so a
    schedule firing again does not stack re-analyses.
    """
    current = Pipeline.objects.current(pipeline_name)
    if current is None:
        raise LookupError(f"No enabled pipeline called “{pipeline_name}” is installed.")
    model = current_model(current)
    if current.model_name and model is None:
        raise LookupError(f"No enabled model “{current.model_name}” is registered for {pipeline_name}.")

    results = Prediction.objects.filter(pipeline__name=pipeline_name, status__in=RESULT_STATES)
    newest = results.filter(experiment=OuterRef("experiment")).order_by("-created_at", "-pk").values("pk")[:1]
    latest = (results.filter(pk=Subquery(newest)).select_related("experiment__lab", "pipeline", "model")
              .order_by("experiment_id"))
    if labs is not None:
        latest = latest.filter(experiment__lab__in=list(labs))
    in_progress = Prediction.objects.filter(pipeline=current, status__in=ACTIVE_STATES)
    if model is not None:
        in_progress = in_progress.filter(model_sha256=model.sha256)
    busy = set(in_progress.values_list("experiment_id", flat=True))

    selected = []
    for prediction in latest:
        if prediction.experiment_id in busy:
            continue
        reasons = []
        if version_key(prediction.pipeline.version) < version_key(current.version):
            reasons.append(f"pipeline version {prediction.pipeline.version} → {current.version}")
        if model is not None and prediction.model_sha256 != model.sha256 and _older_model(prediction, model):
            reasons.append(f"model {prediction.model or prediction.model_sha256[:12] or 'none'} → {model} "
                           f"(sha256 {model.sha256[:12]})")
        if reasons:
            selected.append(StaleExperiment(prediction.experiment, prediction, reasons))
    return selected


def _older_model(prediction: Prediction, current: RegisteredModel) -> bool:
    """The result's model was registered before the current one (or is unknown).

    A result made by a model newer than the current one (an admin disabled it to roll back) is
    not "older" and is left alone.
    """
    made_by = prediction.model
    if made_by is None or made_by.sha256 != prediction.model_sha256:
        return True
    return (made_by.created_at, made_by.pk) < (current.created_at, current.pk)


def resolve_labs(labs) -> list[Lab] | None:
    """Labs given by id or name (as admins type them in a schedule's arguments); None = all."""
    if labs in (None, "", []):
        return None
    if isinstance(labs, (str, int)):
        labs = [labs]
    ids = [v for v in labs if isinstance(v, int) or (isinstance(v, str) and v.isdigit())]
    names = [v for v in labs if v not in ids]
    found = list(Lab.objects.filter(Q(pk__in=[int(v) for v in ids]) | Q(name__in=names)))
    missing = set(map(str, labs)) - {str(lab.pk) for lab in found} - {lab.name for lab in found}
    if missing:
        raise LookupError(f"No lab {', '.join(sorted(missing))}.")
    return found


# -- the two scheduled jobs -----------------------------------------------------------------------
def rerun(pipeline_name: str, experiment_ids, params=None, priority=Prediction.Priority.NORMAL,
          schedule_name: str = "") -> dict:
    """Run pipeline P again on the chosen experiments (all their ready slides).

    An experiment where this schedule's previous run of P is still queued or running is skipped:
    a schedule firing faster than its work does not stack up, and a redelivered message (worker
    lost mid-task) does not submit twice.
    """
    _check_priority(priority)
    pipeline = Pipeline.objects.current(pipeline_name)
    if pipeline is None:
        raise LookupError(f"No enabled pipeline called “{pipeline_name}” is installed.")
    if isinstance(experiment_ids, (int, str)):
        experiment_ids = [experiment_ids]
    experiments = {e.pk: e for e in Experiment.objects.filter(pk__in=[int(i) for i in experiment_ids])}
    summary = {"pipeline": str(pipeline), "schedule": schedule_name, "submitted": [], "skipped": []}
    busy = set(Prediction.objects.filter(pipeline=pipeline, status__in=ACTIVE_STATES, trigger=Prediction.Trigger.SCHEDULE,
                                         schedule_name=schedule_name[:200]).values_list("experiment_id", flat=True))
    for experiment_id in map(int, experiment_ids):
        experiment = experiments.get(experiment_id)
        if experiment is None:
            _skip(summary, experiment_id, "no such experiment")
            continue
        if experiment_id in busy:
            _skip(summary, experiment_id, "this schedule's previous run is still queued or running")
            continue
        slides = list(experiment.slides.filter(status=Slide.Status.READY))
        _submit(summary, experiment, pipeline, slides, params, priority, schedule_name)
    return summary


def reanalyse_stale(pipeline_name: str, labs=None, priority=Prediction.Priority.NORMAL,
                    schedule_name: str = "") -> dict:
    """Re-analyse every experiment whose latest result of P is older than the current P or model.

    Each re-analysis runs on the slides of that latest result (those still ready), with its
    parameters (any the current version no longer has are dropped).
    """
    _check_priority(priority)
    pipeline = Pipeline.objects.current(pipeline_name)
    if pipeline is None:
        raise LookupError(f"No enabled pipeline called “{pipeline_name}” is installed.")
    summary = {"pipeline": str(pipeline), "schedule": schedule_name, "submitted": [], "skipped": []}
    known = {p.name for p in pipeline.code.params}
    for stale in stale_experiments(pipeline_name, resolve_labs(labs)):
        slides = [run.slide for run in stale.latest.runs.select_related("slide")
                  if run.slide.status == Slide.Status.READY]
        params = {k: v for k, v in (stale.latest.params or {}).items() if k in known}
        _submit(summary, stale.experiment, pipeline, slides, params, priority, schedule_name,
                reasons=stale.reasons, replaces=stale.latest.pk)
    return summary


def _check_priority(priority):
    if priority not in Prediction.Priority.values:
        raise ValueError(f"priority must be one of {', '.join(Prediction.Priority.values)}; got {priority!r}.")


def _submit(summary, experiment, pipeline, slides, params, priority, schedule_name, **extra):
    if not slides:
        _skip(summary, experiment.pk, "no ready slides")
        return
    try:
        prediction = services.submit_prediction(experiment, pipeline, slides, params,
                                                trigger=Prediction.Trigger.SCHEDULE, priority=priority,
                                                schedule_name=schedule_name[:200])
    except engine.SubmitError as exc:
        _skip(summary, experiment.pk, str(exc))
        return
    summary["submitted"].append({"experiment": experiment.pk, "prediction": prediction.pk, **extra})
    log.info("schedule %r submitted prediction %s on experiment %s", schedule_name, prediction.pk, experiment.pk)


def _skip(summary, experiment_id, reason):
    summary["skipped"].append({"experiment": experiment_id, "reason": reason})
    log.warning("schedule %r skipped experiment %s: %s", summary["schedule"], experiment_id, reason)
