"""Tissue detection on the real CMU H&E slide and on images with no tissue at all."""

from functools import lru_cache
from pathlib import Path

import numpy as np
import openslide
import pytest

from predictions.imaging.tissue import tissue_fraction, tissue_mask

SLIDE = Path(__file__).resolve().parents[1].parent / "shared/data/slides/cmu-1-small-region.svs"


@lru_cache(maxsize=None)
def read_rgba(x: int, y: int, w: int, h: int) -> np.ndarray:
    with openslide.OpenSlide(str(SLIDE)) as slide:
        return np.asarray(slide.read_region((x, y), 0, (w, h)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_thumbnail_mask_agrees_with_simple_grey_threshold():
    with openslide.OpenSlide(str(SLIDE)) as slide:
        thumb = np.asarray(slide.get_thumbnail((555, 742)).convert("RGB"))
    mask = tissue_mask(thumb)
    # Independent reference: anything clearly darker than the glass.
    reference = thumb.mean(axis=2) < 220
    assert iou(mask, reference) > 0.85  # measured 0.92
    # The section covers about a third of this region (see the slide thumbnail).
    assert 0.25 < tissue_fraction(mask) < 0.5


def test_dense_tissue_tile_is_mostly_tissue_and_glass_tile_is_not():
    dense = tissue_mask(read_rgba(1024, 1024, 512, 512))
    glass = tissue_mask(read_rgba(0, 1536, 512, 512))
    assert tissue_fraction(dense) > 0.75  # measured 0.88
    assert tissue_fraction(glass) < 0.01


@pytest.mark.parametrize(
    "image",
    [
        np.full((256, 256, 3), 255, np.uint8),
        np.full((256, 256, 3), 238, np.uint8),
        np.zeros((256, 256, 3), np.uint8),
        np.clip(
            245 + np.random.default_rng(0).normal(0, 3, (256, 256, 3)), 0, 255
        ).astype(np.uint8),
    ],
    ids=["white", "grey", "black", "white-with-noise"],
)
def test_image_without_tissue_gives_empty_mask(image):
    mask = tissue_mask(image)
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    assert not mask.any()
    assert tissue_fraction(mask) == 0.0


def test_specks_are_dropped_and_a_tissue_piece_is_kept():
    image = np.full((200, 200, 3), 245, np.uint8)
    image[50:100, 60:110] = (200, 120, 170)  # 2,500 px of eosin-pink "tissue"
    for r, c in [(10, 10), (150, 30), (180, 180)]:
        image[r : r + 3, c : c + 3] = (120, 60, 140)  # 9 px specks of dust
    mask = tissue_mask(image)
    assert mask[50:100, 60:110].all()
    assert mask.sum() < 2500 * 1.1
    assert not mask[:40].any() and not mask[140:].any()


def test_rgba_transparent_pixels_are_background():
    rgba = read_rgba(1024, 1024, 512, 512).copy()
    assert np.array_equal(tissue_mask(rgba), tissue_mask(rgba[..., :3]))
    rgba[:, :256, 3] = 0
    mask = tissue_mask(rgba)
    assert not mask[:, :256].any()
    assert tissue_fraction(mask[:, 256:]) > 0.75


def test_fully_transparent_image_has_no_tissue():
    assert not tissue_mask(np.zeros((64, 64, 4), np.uint8)).any()


def test_fixed_threshold_is_used_when_given():
    image = np.full((100, 100, 3), 240, np.uint8)
    image[:, 50:] = (220, 180, 200)  # saturation 0.18
    assert tissue_fraction(tissue_mask(image, min_saturation=0.1)) == pytest.approx(0.5)
    assert not tissue_mask(image, min_saturation=0.3).any()


def test_tissue_fraction():
    mask = np.zeros((10, 10), bool)
    mask[:3] = True
    assert tissue_fraction(mask) == pytest.approx(0.3)
    assert tissue_fraction(np.zeros((0, 0), bool)) == 0.0
