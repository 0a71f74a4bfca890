"""Tile batches are sized by work: a few seconds each on a large slide, small steps on a small one."""

import math

from predictions.pipelines import get_pipeline
from predictions.pipelines.ihc_dab import IhcDab
from predictions.pipelines.tissue_classifier import TissueClassifier


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
