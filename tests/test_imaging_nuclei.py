"""Nucleus detection: synthetic nuclei with known positions, and the real CMU H&E slide."""

from functools import lru_cache
from pathlib import Path

import numpy as np
import openslide
import pytest
from skimage.draw import disk

from predictions.imaging.nuclei import detect_nuclei, segment_nuclei
from predictions.imaging.tissue import tissue_mask

SLIDE = Path(__file__).resolve().parents[1].parent / "shared/data/slides/cmu-1-small-region.svs"
MPP = 0.499
HEMATOXYLIN = (80, 60, 150)
EOSIN = (235, 170, 200)


@lru_cache(maxsize=None)
def read_rgb(x: int, y: int, w: int, h: int) -> np.ndarray:
    with openslide.OpenSlide(str(SLIDE)) as slide:
        return np.asarray(slide.read_region((x, y), 0, (w, h)))[..., :3]


def synthetic(centres: list[tuple[int, int]], radius: int = 7) -> np.ndarray:
    image = np.full((200, 200, 3), EOSIN, np.uint8)
    for centre in centres:
        rr, cc = disk(centre, radius, shape=image.shape[:2])
        image[rr, cc] = HEMATOXYLIN
    noise = np.random.default_rng(0).normal(0, 4, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_separate_and_touching_nuclei_are_found_where_drawn():
    separate = [(30, 30), (30, 100), (100, 60), (100, 150), (160, 160)]
    touching = [(160, 40), (160, 52)]  # radius 7, 12 px apart: they overlap
    found = detect_nuclei(synthetic(separate + touching))
    assert len(found) == 7
    expected = np.array(sorted(separate + touching), float)
    assert np.abs(found - expected).max() < 1.5


def test_blank_tile_has_no_nuclei():
    for value in (255, 240):
        found = detect_nuclei(np.full((512, 512, 3), value, np.uint8))
        assert found.shape == (0, 2)


def test_area_bounds_drop_objects():
    image = synthetic([(50, 50), (150, 150)], radius=4)  # about 50 px each
    assert len(detect_nuclei(image)) == 2
    assert len(detect_nuclei(image, min_area_px=80)) == 0
    assert len(detect_nuclei(image, max_area_px=30)) == 0


def test_count_doubles_with_the_analysed_area():
    # Two vertically adjacent, mostly-tissue 512 x 512 tiles, separately and as one tile.
    first = detect_nuclei(read_rgb(1024, 1024, 512, 512))
    second = detect_nuclei(read_rgb(1024, 1536, 512, 512))
    both = detect_nuclei(read_rgb(1024, 1024, 512, 1024))
    # Measured 443 + 396 separately, 808 together.
    assert 0.85 < len(both) / (len(first) + len(second)) < 1.15
    assert 1.5 < len(both) / len(first) < 2.5


def test_nucleus_sizes_and_density_are_plausible_on_he():
    tile = read_rgb(512, 2048, 512, 512)
    tissue = tissue_mask(tile)
    labels = segment_nuclei(tile, tissue=tissue)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    diameters_um = 2 * np.sqrt(areas / np.pi) * MPP
    # Nuclei here are about 5-15 um; Otsu keeps their dark core, so the median sits low
    # (measured 4.9 um, 154 nuclei).
    assert 4.0 < np.median(diameters_um) < 12.0
    assert 100 < len(areas) < 400
    per_mm2 = len(areas) / (tissue.sum() * MPP**2 * 1e-6)
    assert 1_000 < per_mm2 < 20_000


def test_centroids_lie_on_tissue_and_are_sorted_and_deterministic():
    tile = read_rgb(1024, 512, 512, 512)
    tissue = tissue_mask(tile)
    found = detect_nuclei(tile, tissue=tissue)
    again = detect_nuclei(tile, tissue=tissue)
    assert np.array_equal(found, again)
    assert found.dtype == np.float64 and found.shape[1] == 2
    assert np.array_equal(found, found[np.lexsort((found[:, 1], found[:, 0]))])
    rows, cols = np.rint(found).astype(int).T
    assert tissue[rows, cols].mean() > 0.95


def test_threshold_above_otsu_finds_fewer_nuclei():
    # Otsu is 0.10 on this tile; far below it nuclei merge into clumps over max_area_px.
    tile = read_rgb(1024, 512, 512, 512)
    counts = [len(detect_nuclei(tile, threshold=t)) for t in (0.1, 0.2, 0.3)]
    assert counts[0] > counts[1] > counts[2]
    assert len(detect_nuclei(tile, threshold=10.0)) == 0


def test_rgba_input_is_accepted():
    rgba = np.dstack([read_rgb(1024, 512, 256, 256), np.full((256, 256), 255, np.uint8)])
    assert np.array_equal(detect_nuclei(rgba), detect_nuclei(rgba[..., :3]))


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 2)])
def test_rejects_non_rgb(shape):
    with pytest.raises(ValueError):
        detect_nuclei(np.zeros(shape, np.uint8))
