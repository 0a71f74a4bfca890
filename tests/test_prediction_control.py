"""Cancel, crash recovery and partial failure, with real workers."""

import time

import pytest
from celery import states
from django.urls import reverse
from django_celery_results.models import TaskResult

from experiments.slide_files import SlideReader
from histoia.celery import app
from predictions import engine
from predictions.models import BatchResult, Status
from predictions.pipelines import Plan
from tests.conftest import CMU_SLIDE, real_stack_required, wait_final, wait_for

pytestmark = pytest.mark.worker

# Small tiles make many short batches: long enough to act on mid-prediction.
MANY_BATCHES = {"tile_size": 128}


def batch_count():
    return BatchResult.objects.count()


def test_cancel_a_running_prediction_from_its_page(workers, pipelines, make_slide, alice, alice_client):
    slides = [make_slide(CMU_SLIDE, f"cmu-{i}.svs") for i in range(3)]
    prediction = engine.submit(slides[0].experiment, pipelines["nuclei-density"], slides, MANY_BATCHES, user=alice)
    wait_for(lambda: BatchResult.objects.filter(run__prediction=prediction).exists(), message="first batch")

    response = alice_client.post(reverse("predictions:cancel", args=[prediction.pk]), follow=True)
    assert "Prediction cancelled" in response.content.decode()
    prediction.refresh_from_db()
    assert prediction.status == Status.CANCELLED
    assert prediction.cancelled_by == alice and prediction.cancelled_at is not None

    # Work stops at the next batch boundary: at most the batches already running finish (each
    # is a second or two of work).
    wait_for(lambda: not TaskResult.objects.filter(task_id__startswith=f"p{prediction.pk}-",
                                                   status=states.STARTED).exists(),
             timeout=30, message="the batches running at the cancel to end")
    settled = batch_count()
    time.sleep(3)
    assert batch_count() == settled
    code = pipelines["nuclei-density"].code
    with SlideReader(CMU_SLIDE) as reader:
        per_slide = len(code.prepare(reader, code.parse_params(MANY_BATCHES)).plan.batches())
    assert per_slide >= 10
    assert settled < 3 * per_slide  # the rest was never run
    assert not prediction.runs.filter(status=Status.RUNNING).exists()

    # A finished prediction cannot be cancelled again: the page says why.
    again = alice_client.post(reverse("predictions:cancel", args=[prediction.pk]), follow=True)
    assert "already ended" in again.content.decode()


@pytest.mark.skipif(not real_stack_required() and not app.conf.broker_url.startswith("amqp"),
                    reason="redelivery after a crash needs RabbitMQ's acknowledgements")
def test_sigkill_of_the_cpu_worker_mid_prediction_still_ends_with_identical_figures(workers, pipelines, make_slide):
    slides = [make_slide(CMU_SLIDE, f"cmu-{i}.svs") for i in range(2)]
    experiment = slides[0].experiment
    reference = wait_final(engine.submit(experiment, pipelines["nuclei-density"], slides, MANY_BATCHES))
    assert reference.status == Status.SUCCEEDED

    prediction = engine.submit(experiment, pipelines["nuclei-density"], slides, MANY_BATCHES)
    wait_for(lambda: BatchResult.objects.filter(run__prediction=prediction).count() >= 2, message="a few batches")
    workers.kill("cpu")  # the main process and its pool children, mid-batch
    prediction.refresh_from_db()
    assert prediction.status == Status.RUNNING
    workers.start("cpu")

    wait_final(prediction, timeout=240)
    assert prediction.status == Status.SUCCEEDED, prediction.error
    expected = {r.slide_id: r.metrics for r in reference.runs.all()}
    assert {r.slide_id: r.metrics for r in prediction.runs.all()} == expected
    for slide_run in prediction.runs.all():
        indices = list(slide_run.batches.values_list("index", flat=True))
        assert sorted(indices) == list(range(len(Plan.from_json(slide_run.plan).batches())))  # each once
    assert prediction.done_units == prediction.total_units


def test_a_slide_that_fails_mid_pipeline_makes_the_prediction_partial(workers, pipelines, make_slide, tmp_path):
    good = make_slide(CMU_SLIDE, "good.svs")
    bad = make_slide(CMU_SLIDE, "damaged.svs")
    # The stored file is damaged after it was checked (a storage fault): the slide must fail
    # with a reason, and the other slide must still finish.
    with open(bad.file.path, "r+b") as fh:
        fh.truncate(4096)
    prediction = wait_final(engine.submit(good.experiment, pipelines["ihc-dab"], [good, bad]))
    assert prediction.status == Status.PARTIAL
    assert "damaged.svs" in prediction.error and "1 of 2" in prediction.error
    runs = {r.slide.original_name: r for r in prediction.runs.select_related("slide")}
    assert runs["good.svs"].status == Status.SUCCEEDED and runs["good.svs"].metrics["tissue_area_px"] > 0
    assert runs["damaged.svs"].status == Status.FAILED
    assert "could not be read any more" in runs["damaged.svs"].error
