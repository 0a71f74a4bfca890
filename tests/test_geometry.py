"""Regions as polygons (predictions/geometry.py): tile unions with exact areas, tissue outlines
at the right place in level-0 px, holes in their own piece, every polygon valid for QuPath."""

import numpy as np
import pytest
import shapely
from skimage.draw import disk
from skimage.measure import label

from predictions.geometry import grid_polygons, mask_polygons, polygons_area


def ring_area(ring):
    """Signed area (shoelace) in (x, y): positive for an exterior, negative for a hole."""
    xy = np.asarray(ring, float)
    return 0.5 * float(np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]))


def polygon_area(polygon):
    return ring_area(polygon[0]) + sum(ring_area(h) for h in polygon[1:])  # holes are negative


def check_polygons(polygons, width, height):
    """Closed rings on the slide, exteriors positive and holes negative, each polygon valid."""
    for polygon in polygons:
        for ring in polygon:
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert all(0 <= x <= width and 0 <= y <= height for x, y in ring)
        assert ring_area(polygon[0]) > 0 and all(ring_area(h) < 0 for h in polygon[1:])
        shape = shapely.Polygon(polygon[0], polygon[1:])
        assert shape.is_valid, shapely.is_valid_reason(shape)


def tile_area(r, c, size, width, height):
    return (min((c + 1) * size, width) - c * size) * (min((r + 1) * size, height) - r * size)


# -- tiles merged into regions ------------------------------------------------------------------
def test_merged_tiles_are_exact_unions_with_holes_and_separate_corners():
    grid = np.array([[1, 1, 1, 0],
                     [1, 0, 1, 0],
                     [1, 1, 1, 0],
                     [0, 0, 0, 1]], bool)
    polygons = grid_polygons(grid, 10, width=35, height=40)
    check_polygons(polygons, 35, 40)
    # The ring with a hole, and the lone corner tile as a polygon of its own (they touch at a point).
    assert len(polygons) == 2
    ring_with_hole = next(p for p in polygons if len(p) == 2)
    assert ring_with_hole[0] == [(0, 0), (30, 0), (30, 30), (0, 30), (0, 0)]
    assert polygon_area(ring_with_hole) == 9 * 100 - 100
    corner = next(p for p in polygons if len(p) == 1)
    # Clipped to the slide: the grid runs past x = 35.
    assert polygon_area(corner) == 5 * 10
    assert polygons_area(polygons) == 8 * 100 + 50


def test_a_hole_that_meets_its_region_at_a_corner_stays_a_valid_hole():
    grid = np.array([[1, 1, 1],
                     [1, 0, 1],
                     [1, 1, 0]], bool)
    (polygon,) = grid_polygons(grid, 100, width=300, height=300)
    check_polygons([polygon], 300, 300)
    assert len(polygon) == 2 and polygon_area(polygon) == 7 * 100 * 100


def test_tiles_past_the_slide_are_clipped_or_left_out():
    grid = np.ones((3, 3), bool)
    # The slide ends inside the second column and on the second row's edge: the third column
    # and row lie wholly past it.
    polygons = grid_polygons(grid, 10, width=15, height=20)
    assert polygons == [[[(0, 0), (15, 0), (15, 20), (0, 20), (0, 0)]]]
    # Of the anti-diagonal, only the middle tile starts on the slide.
    polygons = grid_polygons(np.eye(3, dtype=bool)[:, ::-1], 10, width=15, height=20)
    assert polygons == [[[(10, 10), (15, 10), (15, 20), (10, 20), (10, 10)]]]
    assert grid_polygons(np.zeros((3, 3), bool), 10, 15, 20) == []


def test_a_random_grid_is_covered_exactly_once():
    rng = np.random.default_rng(3)
    grid = rng.random((60, 80)) < 0.55
    size, width, height = 64, 80 * 64 - 17, 60 * 64 - 40
    polygons = grid_polygons(grid, size, width, height)
    check_polygons(polygons, width, height)
    # One polygon per piece of tiles joined by an edge (a corner is not enough).
    assert len(polygons) == label(grid, connectivity=1).max()
    expected = sum(tile_area(r, c, size, width, height) for r, c in zip(*np.nonzero(grid)))
    assert polygons_area(polygons) == expected
    assert sum(polygon_area(p) for p in polygons) == expected
    # The centre of every chosen tile is in exactly one polygon, that of every other tile in none.
    rows, cols = np.indices(grid.shape)
    x, y = (cols + 0.5) * size, (rows + 0.5) * size
    on_slide = (x < width) & (y < height)
    inside = sum(shapely.contains_xy(shapely.Polygon(p[0], p[1:]), x, y).astype(int) for p in polygons)
    assert np.array_equal(inside[on_slide], grid[on_slide].astype(int))


# -- the tissue mask's outline ------------------------------------------------------------------
def test_tissue_mask_contours_scale_to_level_0():
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    mask[8:12, 13:17] = False   # a hole
    (polygon,) = mask_polygons(mask, width=300, height=200)
    check_polygons([polygon], 300, 200)
    assert len(polygon) == 2
    xs = [x for x, _ in polygon[0]]
    ys = [y for _, y in polygon[0]]
    # Halfway between the centres of tissue and background pixels: along a straight run, the
    # pixels' shared edge (pixel 10 spans x 100..110).
    assert min(xs) == pytest.approx(100) and max(xs) == pytest.approx(200)
    assert min(ys) == pytest.approx(50) and max(ys) == pytest.approx(150)
    # Corners are cut by half a mask pixel; the hole is taken off.
    assert 100 * 100 - 40 * 40 - 1000 < polygon_area(polygon) < 100 * 100 - 40 * 40 + 100
    assert polygons_area([polygon]) == pytest.approx(polygon_area(polygon))


def test_an_island_in_a_hole_is_a_piece_of_its_own():
    tissue = np.zeros((100, 100), bool)
    tissue[disk((50, 50), 40)] = True
    hole = np.zeros_like(tissue)
    hole[disk((50, 50), 25)] = True
    island = np.zeros_like(tissue)
    island[disk((50, 50), 10)] = True
    fragment = np.zeros_like(tissue)
    fragment[disk((10, 88), 6)] = True
    mask = (tissue & ~hole) | island | fragment
    polygons = mask_polygons(mask, width=1000, height=1000)    # 10 px per mask px
    check_polygons(polygons, 1000, 1000)
    assert sorted(len(p) for p in polygons) == [1, 1, 2]
    ring = next(p for p in polygons if len(p) == 2)
    # Areas as the mask counts them, to within the corners the outline cuts and simplification.
    assert polygon_area(ring) == pytest.approx((tissue & ~hole).sum() * 100, rel=0.03)
    pieces = sorted((p for p in polygons if len(p) == 1), key=polygon_area)
    assert [polygon_area(p) for p in pieces] == [pytest.approx(fragment.sum() * 100, rel=0.1),
                                                 pytest.approx(island.sum() * 100, rel=0.1)]
    assert polygons_area(polygons) == pytest.approx(mask.sum() * 100, rel=0.03)


def test_tissue_at_the_mask_edge_reaches_the_slide_edge_and_no_further():
    mask = np.zeros((40, 60), bool)
    mask[:, :] = True
    mask[10:30, 20:40] = False
    width, height = 6000, 3000          # x and y scaled differently (100 and 75 px per mask px)
    (polygon,) = mask_polygons(mask, width, height)
    check_polygons([polygon], width, height)
    xs = [x for x, _ in polygon[0]]
    ys = [y for _, y in polygon[0]]
    # The outline follows the mask's own edge, the slide's edge, to within the simplification's
    # half mask pixel, and never past it.
    assert 0 <= min(xs) <= 50 and width - 50 <= max(xs) <= width
    assert 0 <= min(ys) <= 37.5 and height - 37.5 <= max(ys) <= height
    # The 20 x 20 px hole, each side within half a mask pixel.
    assert 19 * 19 * 100 * 75 <= -ring_area(polygon[1]) <= 21 * 21 * 100 * 75


def test_an_empty_mask_has_no_polygons():
    assert mask_polygons(np.zeros((10, 10), bool), 100, 100) == []


def test_many_blobs_with_holes_are_valid_and_keep_their_area():
    rng = np.random.default_rng(11)
    mask = np.zeros((400, 400), bool)
    for _ in range(12):
        r, c, radius = rng.integers(40, 360), rng.integers(40, 360), rng.integers(10, 40)
        mask[disk((r, c), radius, shape=mask.shape)] = True
    for _ in range(25):
        r, c, radius = rng.integers(0, 400), rng.integers(0, 400), rng.integers(2, 8)
        mask[disk((r, c), radius, shape=mask.shape)] = False
    mask ^= rng.random(mask.shape) < 0.002   # specks and pinholes
    polygons = mask_polygons(mask, width=8000, height=8000)
    check_polygons(polygons, 8000, 8000)
    # Each piece of tissue joined through edges or corners is one polygon at most (marching
    # squares joins some diagonal neighbours and keeps others apart).
    assert label(mask, connectivity=1).max() >= len(polygons) >= label(mask, connectivity=2).max()
    assert polygons_area(polygons) == pytest.approx(mask.sum() * 400, rel=0.1)
