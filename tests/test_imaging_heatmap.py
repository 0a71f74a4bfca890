"""Heatmap, class map and mask overlays, and the legend that goes with them."""

import numpy as np
import pytest

from predictions.imaging.heatmap import (
    COLORMAPS,
    colormap_table,
    legend_stops,
    render_classes,
    render_heatmap,
    render_mask,
)

VIRIDIS_LOW, VIRIDIS_HIGH = (0x44, 0x01, 0x54), (0xFD, 0xE7, 0x25)


def test_one_pixel_per_cell_and_rgba():
    image = render_heatmap(np.zeros((3, 5)), vmin=0, vmax=1)
    assert image.mode == "RGBA"
    assert image.size == (5, 3)  # PIL sizes are (width, height)


def test_nan_cells_are_transparent_and_the_ends_get_the_end_colours():
    grid = np.array([[0.0, 0.5, 1.0], [np.nan, 2.0, -1.0]])
    pixels = np.asarray(render_heatmap(grid, vmin=0.0, vmax=1.0))
    assert pixels[1, 0, 3] == 0
    assert (pixels[[0, 0, 1, 1], [0, 1, 1, 2], 3] == 255).all()
    assert tuple(pixels[0, 0, :3]) == VIRIDIS_LOW
    assert tuple(pixels[0, 2, :3]) == VIRIDIS_HIGH
    # Out-of-range values are clipped to the ends, not wrapped.
    assert tuple(pixels[1, 1, :3]) == VIRIDIS_HIGH
    assert tuple(pixels[1, 2, :3]) == VIRIDIS_LOW


def test_vmin_vmax_scale_the_colours():
    grid = np.array([[100.0, 200.0, 300.0]])
    pixels = np.asarray(render_heatmap(grid, vmin=100, vmax=300, cmap="magma"))
    table = colormap_table("magma")
    assert np.array_equal(pixels[0, :, :3], table[[0, 128, 255]])


def test_all_nan_grid_is_fully_transparent():
    pixels = np.asarray(render_heatmap(np.full((4, 4), np.nan), vmin=0, vmax=1))
    assert (pixels == 0).all()


@pytest.mark.parametrize("cmap", COLORMAPS)
def test_colormaps_are_sequential(cmap):
    table = colormap_table(cmap).astype(float)
    assert table.shape == (256, 3)
    luminance = table @ np.array([0.2126, 0.7152, 0.0722])
    # Never darker from one entry to the next (rounding leaves a few equal steps).
    assert np.all(np.diff(luminance) >= 0)
    assert luminance[-1] - luminance[0] > 150


def test_legend_matches_the_rendered_colours():
    stops = legend_stops(0.0, 300.0, "viridis", n=5)
    assert [value for value, _ in stops] == [0.0, 75.0, 150.0, 225.0, 300.0]
    grid = np.array([[value for value, _ in stops]])
    pixels = np.asarray(render_heatmap(grid, vmin=0.0, vmax=300.0))
    rendered = ["#{:02x}{:02x}{:02x}".format(*p[:3]) for p in pixels[0]]
    assert [colour for _, colour in stops] == rendered
    assert stops[0][1] == "#440154" and stops[-1][1] == "#fde725"


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        render_heatmap(np.zeros((2, 2)), vmin=1, vmax=0)
    with pytest.raises(ValueError):
        render_heatmap(np.zeros((2, 2)), vmin=0, vmax=1, cmap="jet")
    with pytest.raises(ValueError):
        render_heatmap(np.zeros(4), vmin=0, vmax=1)
    with pytest.raises(ValueError):
        legend_stops(0, 1, "viridis", n=1)


def test_render_classes():
    colours = [(200, 200, 200), (230, 120, 160), (90, 40, 140)]
    pixels = np.asarray(render_classes(np.array([[-1, 0], [1, 2]]), colours))
    assert pixels.shape == (2, 2, 4)
    assert pixels[0, 0, 3] == 0
    assert [tuple(pixels[r, c]) for r, c in [(0, 1), (1, 0), (1, 1)]] == [
        (*colour, 255) for colour in colours
    ]
    with pytest.raises(ValueError):
        render_classes(np.array([[3]]), colours)
    with pytest.raises(ValueError):
        render_classes(np.array([[0.5]]), colours)


def test_render_mask():
    mask = np.array([[True, False], [False, True]])
    pixels = np.asarray(render_mask(mask, colour=(10, 20, 30)))
    assert tuple(pixels[0, 0]) == (10, 20, 30, 255)
    assert pixels[0, 1, 3] == 0 and pixels[1, 0, 3] == 0
    assert tuple(np.asarray(render_mask(mask))[1, 1]) == (0, 160, 80, 255)
