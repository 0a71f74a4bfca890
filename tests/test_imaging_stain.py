"""DAB quantification: real IHC against real H&E, bins, H-score arithmetic."""

from pathlib import Path

import numpy as np
import openslide
import pytest
from skimage import data
from skimage.color import hed2rgb, rgb2hed

from predictions.imaging.stain import (
    COUNT_KEYS,
    DabThresholds,
    dab_tile_counts,
    h_score,
    hdab_od,
    positive_fraction,
)
from predictions.imaging.tissue import tissue_mask

SLIDE = Path(__file__).resolve().parents[1].parent / "shared/data/slides/cmu-1-small-region.svs"
# Level-0 origins of four 512 x 512 tiles that are mostly tissue.
HE_TISSUE_TILES = [(1024, 512), (1024, 1024), (1024, 1536), (1024, 2048)]

IHC = data.immunohistochemistry()


def score(counts: dict[str, int]) -> float:
    return h_score(
        counts["weak_px"], counts["moderate_px"], counts["strong_px"], counts["tissue_px"]
    )


def test_hdab_od_channels():
    hema, dab = hdab_od(IHC)
    assert hema.shape == dab.shape == IHC.shape[:2]
    assert hema.dtype == dab.dtype == np.float32
    assert hema.min() >= 0 and dab.min() >= 0
    # Brown membranes dominate this image: DAB OD well above hematoxylin OD on average.
    assert dab.mean() > 2 * hema.mean()


def test_counts_partition_the_tissue():
    counts = dab_tile_counts(IHC, None, DabThresholds())
    assert set(counts) == set(COUNT_KEYS)
    assert counts["tissue_px"] == tissue_mask(IHC).sum()
    parts = counts["negative_px"] + counts["weak_px"] + counts["moderate_px"] + counts["strong_px"]
    assert parts == counts["tissue_px"]


def test_default_thresholds_populate_every_bin_on_ihc():
    counts = dab_tile_counts(IHC)
    for key in ("negative_px", "weak_px", "moderate_px", "strong_px"):
        assert counts[key] / counts["tissue_px"] > 0.05, key


def test_ihc_positive_fraction_far_above_that_of_he():
    ihc = positive_fraction(dab_tile_counts(IHC))
    pooled = dict.fromkeys(COUNT_KEYS, 0)
    with openslide.OpenSlide(str(SLIDE)) as slide:
        for x, y in HE_TISSUE_TILES:
            tile = np.asarray(slide.read_region((x, y), 0, (512, 512)))
            for key, value in dab_tile_counts(tile).items():
                pooled[key] += value
    he = positive_fraction(pooled)
    # Measured: IHC 0.70, H&E 0.13 (eosin leaking into the DAB channel).
    assert ihc > 0.5
    assert he < 0.25
    assert ihc / he > 3.5
    assert score(dab_tile_counts(IHC)) > 3 * score(pooled)


def _with_dab_scaled(rgb: np.ndarray, factor: float) -> np.ndarray:
    hed = rgb2hed(rgb)
    hed[..., 2] *= factor
    return np.clip(np.rint(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)


def test_h_score_in_range_and_rises_as_dab_darkens():
    mask = tissue_mask(IHC)
    scores = [score(dab_tile_counts(_with_dab_scaled(IHC, f), mask)) for f in (0.5, 1.0, 1.5, 2.0)]
    assert all(0 <= s <= 300 for s in scores)
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    # The colour round trip itself must not move the score much.
    assert scores[1] == pytest.approx(score(dab_tile_counts(IHC, mask)), abs=3)


def test_h_score_arithmetic():
    assert h_score(0, 0, 0, 100) == 0
    assert h_score(0, 0, 100, 100) == 300
    assert h_score(10, 20, 30, 100) == pytest.approx(10 + 40 + 90)
    assert h_score(5, 5, 5, 0) == 0.0


def test_blank_tile_has_no_tissue_and_zero_scores():
    counts = dab_tile_counts(np.full((128, 128, 3), 250, np.uint8))
    assert counts == dict.fromkeys(COUNT_KEYS, 0)
    assert positive_fraction(counts) == 0.0
    assert score(counts) == 0.0


def test_thresholds_move_pixels_between_bins():
    mask = tissue_mask(IHC)
    default = dab_tile_counts(IHC, mask)
    stricter = dab_tile_counts(IHC, mask, DabThresholds(weak=0.1, moderate=0.15, strong=0.2))
    assert positive_fraction(stricter) < positive_fraction(default)
    assert stricter["strong_px"] < default["strong_px"]


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError):
        DabThresholds(weak=0.2, moderate=0.1, strong=0.3)


def test_mask_shape_must_match():
    with pytest.raises(ValueError):
        dab_tile_counts(IHC, np.ones((10, 10), bool))
