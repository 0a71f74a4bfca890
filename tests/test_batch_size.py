"""Tile batches are sized by work: a few seconds each on a large slide, small steps on a small one."""

import math

import pytest
from django.utils import timezone

from predictions import engine
from predictions.models import BatchResult, SlideRun
from predictions.pipelines import Plan, get_pipeline
from predictions.pipelines.ihc_dab import IhcDab
from predictions.pipelines.tissue_classifier import TissueClassifier
from tests.conftest import CMU_SLIDE


def test_large_slides_get_fewer_larger_batches_and_small_ones_keep_fine_progress():
    ihc = get_pipeline("ihc-dab", IhcDab.version)
    # A small slide: the old granularity (BATCH_SIZE tiles), so progress moves in small steps.
    assert ihc.batch_size(40, 512) == ihc.BATCH_SIZE
    # A large slide: about BATCH_PIXELS per batch, not hundreds of sub-second tasks.
    large = ihc.batch_size(4000, 512)
    assert large == ihc.BATCH_PIXELS // 512**2 and large > ihc.BATCH_SIZE
    # In between: at least MIN_BATCHES batches, so the bar still moves often.
    middle = ihc.batch_size(900, 512)
    assert math.ceil(900 / middle) >= ihc.MIN_BATCHES and middle > ihc.BATCH_SIZE
    # Smaller tiles, more of them per batch; never fewer than BATCH_SIZE, however large the tiles.
    assert ihc.batch_size(40_000, 128) > large
    assert ihc.batch_size(4000, 2048) == ihc.BATCH_SIZE


def test_the_model_pipeline_keeps_its_own_minimum():
    classifier = get_pipeline("tissue-classifier", TissueClassifier.version)
    assert classifier.batch_size(100, 64) == classifier.BATCH_SIZE == 64
    assert math.ceil(7000 / classifier.batch_size(7000, 64)) == classifier.MIN_BATCHES


def test_the_platform_can_ask_for_more_tiles_per_batch_up_to_the_pixel_cap():
    ihc = get_pipeline("ihc-dab", IhcDab.version)
    assert ihc.batch_size(900, 512, at_least=50) == 50 > ihc.batch_size(900, 512)
    assert ihc.batch_size(900, 512, at_least=10**6) == ihc.BATCH_PIXELS // 512**2


@pytest.mark.django_db(transaction=True)   # the steps are sent after commit
def test_a_pipeline_measured_fast_gets_batches_of_at_least_min_batch_seconds(make_slide, pipelines, settings):
    """On a fast worker (a GPU) batches sized for progress take less than their own fixed cost:
    once the pipeline has a measured speed, a batch is at least HISTOIA_MIN_BATCH_SECONDS of it."""
    slide = make_slide(CMU_SLIDE)
    pipeline = pipelines["nuclei-density"]

    def prepared_plan():
        with engine.inline_steps() as steps:
            prediction = engine.submit(slide.experiment, pipeline, [slide], {"tile_size": 128})
            while steps.pending and steps.pending[0][0] != "predictions.cpu.tile_batch":
                steps.run_next()   # start and prepare; the batches are not run
        plan = Plan.from_json(prediction.runs.get().plan)
        engine.cancel(prediction)   # its place in the queue goes to the next one
        return plan

    first = prepared_plan()
    code = pipeline.code
    assert first.batch_size == code.batch_size(len(first.tiles), 128) < len(first.tiles)   # no history yet
    # History: this pipeline's batches ran at 2,000 tiles/s on one worker process.
    BatchResult.objects.create(run=SlideRun.objects.get(plan__isnull=False), index=0, rows=[], tiles=2000, seconds=1.0,
                               queue="cpu", worker="cpu@test", started_at=timezone.now(), finished_at=timezone.now())
    settings.HISTOIA_MIN_BATCH_SECONDS = 0.1
    assert prepared_plan().batch_size == 200
    settings.HISTOIA_MIN_BATCH_SECONDS = 0
    assert prepared_plan().batch_size == first.batch_size
