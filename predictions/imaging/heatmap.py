"""Rendering of per-tile grids (scores, classes, masks) as RGBA overlay images.

One pixel per grid cell: callers scale the image to the slide thumbnail with
Image.resize(..., Image.NEAREST) so cell borders stay sharp.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

# matplotlib is not a dependency, so its colormaps are rebuilt from nine samples each
# (matplotlib's values at 0, 1/8, ..., 1), linearly interpolated in RGB: not byte-identical
# to matplotlib's 256-entry tables, but the same perceptual ramp, which is all a heatmap needs.
_ANCHORS: dict[str, tuple[str, ...]] = {
    "viridis": (
        "#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c",
        "#28ae80", "#5ec962", "#addc30", "#fde725",
    ),
    "magma": (
        "#000004", "#1c1044", "#4f127b", "#812581", "#b5367a",
        "#e55064", "#fb8761", "#fec287", "#fcfdbf",
    ),
}  # fmt: skip

COLORMAPS = tuple(_ANCHORS)


@lru_cache(maxsize=None)
def colormap_table(cmap: str) -> np.ndarray:
    """256 x 3 uint8 lookup table of a colormap named in COLORMAPS."""
    if cmap not in _ANCHORS:
        raise ValueError(f"unknown colormap {cmap!r}; choose from {', '.join(COLORMAPS)}")
    anchors = np.array([_hex_to_rgb(h) for h in _ANCHORS[cmap]], np.float64)
    positions = np.linspace(0.0, 1.0, len(anchors))
    samples = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(samples, positions, anchors[:, c]) for c in range(3)], axis=1)
    table = np.rint(table).astype(np.uint8)
    table.setflags(write=False)
    return table


def render_heatmap(
    grid: np.ndarray, *, vmin: float, vmax: float, cmap: str = "viridis"
) -> Image.Image:
    """RGBA image of a 2-D float grid; NaN cells are fully transparent.

    Values are clipped to [vmin, vmax]; when vmax == vmin every finite cell gets the low colour.
    """
    values = np.asarray(grid, np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D grid, got shape {values.shape}")
    if vmax < vmin:
        raise ValueError(f"vmax ({vmax}) < vmin ({vmin})")
    missing = np.isnan(values)
    rgba = np.empty(values.shape + (4,), np.uint8)
    rgba[..., :3] = colormap_table(cmap)[_table_indices(values, vmin, vmax)]
    rgba[..., 3] = 255
    rgba[missing] = 0
    return Image.fromarray(rgba)


def render_classes(grid_int: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    """RGBA image of a 2-D grid of class indices into colours; -1 cells are transparent."""
    classes = np.asarray(grid_int)
    if classes.ndim != 2 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"expected a 2-D integer grid, got {classes.dtype} {classes.shape}")
    if classes.size and (classes.min() < -1 or classes.max() >= len(colours)):
        raise ValueError(f"class indices must lie in -1..{len(colours) - 1}")
    # The palette's last row is the transparent one, so -1 indexes it directly.
    palette = np.zeros((len(colours) + 1, 4), np.uint8)
    if colours:
        palette[:-1, :3] = np.asarray(colours, np.uint8).reshape(-1, 3)
        palette[:-1, 3] = 255
    return Image.fromarray(palette[classes])


def render_mask(mask: np.ndarray, colour: tuple[int, int, int] = (0, 160, 80)) -> Image.Image:
    """RGBA image of a boolean mask: True cells opaque in colour, False cells transparent."""
    selected = np.asarray(mask, bool)
    if selected.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {selected.shape}")
    rgba = np.zeros(selected.shape + (4,), np.uint8)
    rgba[selected] = (*colour, 255)
    return Image.fromarray(rgba)


def legend_stops(vmin: float, vmax: float, cmap: str, n: int = 5) -> list[tuple[float, str]]:
    """n evenly spaced (value, '#rrggbb') pairs from vmin to vmax, coloured as render_heatmap."""
    if n < 2:
        raise ValueError("a legend needs at least 2 stops")
    values = np.linspace(vmin, vmax, n)
    colours = colormap_table(cmap)[_table_indices(values, vmin, vmax)]
    return [(float(v), "#{:02x}{:02x}{:02x}".format(*c)) for v, c in zip(values, colours)]


def _table_indices(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Colormap table rows for values (NaN gets row 0; callers make those cells transparent)."""
    span = vmax - vmin
    with np.errstate(invalid="ignore"):
        scaled = (values - vmin) / span if span > 0 else np.zeros_like(values)
    scaled = np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0)
    return np.rint(scaled * 255).astype(np.intp)


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
