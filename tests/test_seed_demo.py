"""seed_demo (what `make run` runs before the workers start) makes the Validation experiment with
finished predictions of every pipeline, computed in-process, and a second call changes nothing.

No worker is needed: the seed runs the task bodies itself. The transactional database is needed
because the engine sends its messages from transaction.on_commit.
"""

import io

import pytest
from django.core.management import call_command

from tests.conftest import CMU_SLIDE


def _counts():
    from experiments.models import Experiment, Slide
    from predictions.models import BatchResult, Prediction, SlideRun

    models = (Experiment, Slide, Prediction, SlideRun, BatchResult)
    return {model.__name__: model.objects.count() for model in models}


@pytest.mark.django_db(transaction=True)
def test_seed_demo_makes_the_validation_experiment_once(client):
    from django_celery_results.models import TaskResult

    from predictions.management.commands.seed_validation import current_pipelines
    from experiments.models import Experiment, Slide
    from predictions.imaging.synthetic import case_names
    from predictions.models import Prediction, Status

    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    output = out.getvalue()

    experiment = Experiment.objects.get(lab__name="Demo lab", name="Validation")
    assert experiment.stain == ""  # estimated per slide, so every pipeline takes every slide
    names = {f"{name}.tiff" for name in case_names(fast=True)}
    if CMU_SLIDE.is_file():
        names.add(CMU_SLIDE.name)
    slides = list(experiment.slides.all())
    assert {s.original_name for s in slides} == names
    assert all(s.status == Slide.Status.READY and s.thumbnail for s in slides), [(s, s.error) for s in slides]

    pipelines = current_pipelines()
    assert len(pipelines) >= 4
    predictions = list(experiment.predictions.select_related("pipeline"))
    assert sorted(p.pipeline_id for p in predictions) == sorted(p.pk for p in pipelines)
    for prediction in predictions:
        assert prediction.status == Status.SUCCEEDED, (prediction.pipeline, prediction.error)
        assert prediction.trigger == Prediction.Trigger.COMMAND
        runs = list(prediction.runs.select_related("slide"))
        assert {r.slide.original_name for r in runs} == names
        for run in runs:
            assert run.status == Status.SUCCEEDED and run.metrics, (prediction.pipeline, run.slide, run.error)
        assert f"#{prediction.pk} {prediction.pipeline.name} " in output  # its summary line
    # The point of the demo: ihc-dab flags the H&E slides rather than calling them DAB-positive.
    ihc = next(p for p in predictions if p.pipeline.name == "ihc-dab")
    assert ihc.runs.get(slide__original_name="he_e1.tiff").metrics["stain_mismatch"] is True
    # Made in-process: nothing was published for the workers (a sent message leaves a task row,
    # named after its prediction; rows of other tests' leftover work do not count).
    from django.db.models import Q

    published = Q()
    for prediction in predictions:
        published |= Q(task_id__startswith=f"p{prediction.pk}-")
    assert not TaskResult.objects.filter(published).exists()
    assert "Validation experiment ready in" in output

    # What a new user opens: the experiment with its predictions, and a prediction's figures.
    logged_in = client.post("/accounts/login/", {"username": "histologist",
                                                 "password": _password(output, "histologist")})
    assert logged_in.status_code == 302, "the printed password logs in"
    page = client.get(experiment.get_absolute_url())
    assert page.status_code == 200
    for prediction in predictions:
        assert f"/predictions/{prediction.pk}/" in page.content.decode()
    page = client.get(f"/predictions/{ihc.pk}/")
    assert page.status_code == 200 and "hdab_50.tiff" in page.content.decode()

    before = _counts()
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert _counts() == before
    assert "already there" in out.getvalue()


def _password(output: str, username: str) -> str:
    line = next(line for line in output.splitlines() if f"user: {username} " in line)
    return line.split("password:")[1].strip()
