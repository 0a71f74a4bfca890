"""Scheduled re-analyses: the tasks admins schedule in django-celery-beat, driven directly and once
through beat's own scheduler, and the selection of experiments whose result is out of date."""

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest

from predictions.pipelines.tissue_classifier import TissueClassifier
from django.core.files.base import ContentFile
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from experiments.models import Experiment, Slide
from predictions.models import Pipeline, Prediction, RegisteredModel, SlideRun, Status
from predictions.schedules import stale_experiments
from predictions.tasks import reanalyse_stale, rerun_pipeline
from tests.conftest import ARTIFACTS, CMU_SLIDE, REPO, wait_final, wait_for


@pytest.fixture
def pipeline_rows(db):
    # Non-transactional: nothing these tests submit is sent to a broker (no commit happens).
    from predictions.catalogue import sync_pipelines

    sync_pipelines()
    return {p.name: p for p in Pipeline.objects.filter(installed=True)}


def ready(experiment, name="cmu.svs"):
    return Slide.objects.create(experiment=experiment, original_name=name, status=Slide.Status.READY,
                                sha256=(name.encode().hex() * 64)[:64])


# -- re-run pipeline P on chosen experiments ----------------------------------------------------------
def test_rerun_task_driven_directly_makes_predictions_marked_as_scheduled(pipeline_rows, alice, lab_a, experiment):
    second = Experiment.objects.create(name="Second", lab=lab_a)
    empty = Experiment.objects.create(name="Empty", lab=lab_a)
    slides = [ready(experiment, "a.svs"), ready(experiment, "b.svs"), ready(second, "c.svs")]
    Slide.objects.create(experiment=experiment, original_name="bad.svs", status=Slide.Status.INVALID)

    result = rerun_pipeline.apply(
        kwargs={"pipeline": "ihc-dab", "experiments": [experiment.pk, second.pk, empty.pk, 999_999],
                "params": {"tile_size": 256}},
        headers={"periodic_task_name": "Nightly IHC"}).get()

    submitted = {s["experiment"]: s["prediction"] for s in result["submitted"]}
    assert set(submitted) == {experiment.pk, second.pk}
    assert {s["experiment"]: s["reason"] for s in result["skipped"]} == {
        empty.pk: "no ready slides", 999_999: "no such experiment"}
    for prediction in Prediction.objects.filter(pk__in=submitted.values()):
        assert prediction.trigger == Prediction.Trigger.SCHEDULE
        assert prediction.schedule_name == "Nightly IHC" and prediction.triggered_by is None
        assert prediction.params["tile_size"] == 256 and prediction.status == Status.QUEUED
        assert prediction.provenance()["schedule"] == "Nightly IHC"
    assert sorted(Prediction.objects.get(pk=submitted[experiment.pk]).runs.values_list("slide_id", flat=True)) == \
        sorted(s.pk for s in slides[:2])

    # Fired again (or the message delivered twice) while those are still queued: nothing doubles.
    again = rerun_pipeline.apply(kwargs={"pipeline": "ihc-dab", "experiments": [experiment.pk, second.pk]},
                                 headers={"periodic_task_name": "Nightly IHC"}).get()
    assert again["submitted"] == [] and {s["reason"] for s in again["skipped"]} == {
        "this schedule's previous run is still queued or running"}

    # The API shows them as scheduled, with the schedule's name.
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    listed = client.get("/api/v1/predictions/", {"trigger": "schedule"}).json()["results"]
    assert {(p["trigger"], p["schedule_name"]) for p in listed} == {("schedule", "Nightly IHC")}
    assert len(listed) == 2


def test_rerun_task_refuses_a_bad_schedule(pipeline_rows, experiment):
    with pytest.raises(LookupError, match="No enabled pipeline called “nope”"):
        rerun_pipeline.apply(kwargs={"pipeline": "nope", "experiments": [experiment.pk]}).get()
    with pytest.raises(ValueError, match="priority must be one of"):
        rerun_pipeline.apply(kwargs={"pipeline": "ihc-dab", "experiments": [experiment.pk],
                                     "priority": "asap"}).get()
    ready(experiment)
    result = rerun_pipeline.apply(kwargs={"pipeline": "ihc-dab", "experiments": [experiment.pk],
                                          "params": {"tile_size": 99_999}}).get()
    assert result["submitted"] == [] and "must be at most 2048" in result["skipped"][0]["reason"]
    assert result["schedule"] == "run by hand"


# -- the stale-version selector -----------------------------------------------------------------------
@pytest.fixture
def history(pipeline_rows, alice, lab_a, lab_b, experiment):
    """Experiments with results of tissue-classifier made by model v1 (the demo model) or otherwise."""
    from predictions.catalogue import register_demo_model

    v1 = register_demo_model()
    classifier = pipeline_rows["tissue-classifier"]
    old_version = Pipeline.objects.create(name="tissue-classifier", version="0.9", title="old", batch_queue="gpu",
                                          model_name="tissue-classifier-demo")
    Pipeline.objects.filter(pk=old_version.pk).update(installed=False)   # its code is gone: history only
    old_version.refresh_from_db()
    base = timezone.now() - timedelta(days=30)
    made = {}

    def experiment_with(name, results, lab=lab_a):
        exp = experiment if name == "old_model" else Experiment.objects.create(name=name, lab=lab)
        slide = ready(exp, f"{name}.svs")
        for i, (pipeline, model, status) in enumerate(results):
            p = Prediction.objects.create(experiment=exp, pipeline=pipeline, model=model, status=status,
                                          model_sha256=model.sha256 if model else "", params={"min_tissue": 0.5})
            Prediction.objects.filter(pk=p.pk).update(created_at=base + timedelta(days=i))
            SlideRun.objects.create(prediction=p, slide=slide, status=status)
        made[name] = exp
        return exp

    experiment_with("old_model", [(classifier, v1, Status.SUCCEEDED)])
    experiment_with("old_then_failed", [(classifier, v1, Status.SUCCEEDED), (classifier, v1, Status.FAILED)])
    experiment_with("old_partial", [(classifier, v1, Status.PARTIAL)])
    experiment_with("never", [(pipeline_rows["ihc-dab"], None, Status.SUCCEEDED)])
    experiment_with("other_lab", [(classifier, v1, Status.SUCCEEDED)], lab=lab_b)
    experiment_with("old_version", [(old_version, v1, Status.SUCCEEDED)])
    return {"v1": v1, "experiments": made, "classifier": classifier, "base": base}


def register_v2():
    # A version newer than the shipped demo model's (version 2 since its retraining).
    model = RegisteredModel(name="tissue-classifier-demo", version="3", tile_size=224, mpp=1.0, mean=[0.5] * 3,
                            std=[0.25] * 3, class_names=["background", "tissue"])
    model.file.save("v2.pt", ContentFile(b"other weights"), save=False)
    model.save()
    return model


def names(selected):
    return {s.experiment.name for s in selected}


def test_stale_selector_picks_exactly_the_experiments_made_by_an_older_model(history, lab_a):
    # Before: only the result of the older pipeline version is out of date.
    before = stale_experiments("tissue-classifier")
    assert names(before) == {"old_version"}
    assert before[0].reasons == [f"pipeline version 0.9 → {TissueClassifier.version}"]

    v2 = register_v2()
    experiments = history["experiments"]
    # A result already made with v2, and one being made with it now: both up to date.
    up_to_date = Experiment.objects.create(name="up_to_date", lab=lab_a)
    Prediction.objects.create(experiment=up_to_date, pipeline=history["classifier"], model=v2,
                              model_sha256=v2.sha256, status=Status.SUCCEEDED)
    busy_exp = experiments["old_partial"]
    Prediction.objects.create(experiment=busy_exp, pipeline=history["classifier"], model=v2,
                              model_sha256=v2.sha256, status=Status.RUNNING)

    selected = stale_experiments("tissue-classifier")
    assert names(selected) == {"Liver fibrosis", "old_then_failed", "other_lab", "old_version"}
    by_name = {s.experiment.name: s for s in selected}
    assert any("sha256" in r and v2.sha256[:12] in r for r in by_name["Liver fibrosis"].reasons)
    assert len(by_name["old_version"].reasons) == 2    # older version and older model
    # The latest *result* counts: a later failed attempt does not hide an out-of-date result.
    assert by_name["old_then_failed"].latest.status == Status.SUCCEEDED

    assert names(stale_experiments("tissue-classifier", labs=[lab_a])) == {
        "Liver fibrosis", "old_then_failed", "old_version"}
    # Rolling back (v2 disabled): results made by v1 are current again; v2's is newer, not older.
    RegisteredModel.objects.filter(pk=v2.pk).update(enabled=False)
    assert names(stale_experiments("tissue-classifier")) == {"old_version"}


def test_reanalyse_stale_task_submits_with_the_new_model_and_then_has_nothing_left(history):
    v2 = register_v2()
    result = reanalyse_stale.apply(kwargs={"pipeline": "tissue-classifier"},
                                   headers={"periodic_task_name": "After new model"}).get()
    submitted = Prediction.objects.filter(pk__in=[s["prediction"] for s in result["submitted"]])
    assert {p.experiment.name for p in submitted} == {"Liver fibrosis", "old_then_failed", "old_partial",
                                                      "other_lab", "old_version"}
    for prediction in submitted:
        assert prediction.model == v2 and prediction.model_sha256 == v2.sha256
        assert prediction.pipeline == history["classifier"]
        assert prediction.trigger == "schedule" and prediction.schedule_name == "After new model"
        assert prediction.params["min_tissue"] == 0.5             # the latest result's parameters
        assert prediction.runs.count() == 1
    # Running it again while those are queued submits nothing more.
    again = reanalyse_stale.apply(kwargs={"pipeline": "tissue-classifier"}).get()
    assert again["submitted"] == [] and not stale_experiments("tissue-classifier")


def test_reanalyse_stale_for_labs_by_name(history, lab_b):
    register_v2()
    result = reanalyse_stale.apply(kwargs={"pipeline": "tissue-classifier", "labs": [lab_b.name]}).get()
    assert [s["experiment"] for s in result["submitted"]] == [history["experiments"]["other_lab"].pk]
    with pytest.raises(LookupError, match="No lab Nowhere"):
        reanalyse_stale.apply(kwargs={"pipeline": "tissue-classifier", "labs": ["Nowhere"]}).get()


# -- once through beat's own scheduler ------------------------------------------------------------------
@pytest.mark.worker
def test_a_schedule_fires_through_beat_and_its_prediction_runs(workers, pipelines, make_slide, tmp_path):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask
    from django_celery_results.models import TaskResult

    slide = make_slide(CMU_SLIDE)
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="Tissue area, every second (test)", task="predictions.cpu.rerun_pipeline", interval=every_second,
        one_off=True, kwargs=json.dumps({"pipeline": "tissue-area", "experiments": [slide.experiment_id]}))

    log = ARTIFACTS / "beat.log"
    with open(log, "ab") as fh:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "histoia", "beat", "--loglevel=INFO",
             "-s", str(tmp_path / "beat-schedule"), "--pidfile", str(tmp_path / "beat.pid")],
            cwd=REPO, env=workers.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            prediction = wait_for(lambda: Prediction.objects.filter(trigger=Prediction.Trigger.SCHEDULE).first(),
                                  timeout=90, message=f"beat to send the scheduled task (see {log})")
        finally:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(timeout=30)

    assert prediction.schedule_name == "Tissue area, every second (test)"
    assert prediction.experiment_id == slide.experiment_id and prediction.triggered_by is None
    row = TaskResult.objects.get(task_name="predictions.cpu.rerun_pipeline")
    assert row.periodic_task_name == "Tissue area, every second (test)" and row.worker == workers.cpu_name
    wait_final(prediction)
    assert prediction.status == Status.SUCCEEDED, prediction.error
    assert Prediction.objects.filter(trigger=Prediction.Trigger.SCHEDULE).count() == 1   # one-off
