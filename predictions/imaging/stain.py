"""DAB immunostaining quantification: optical densities, intensity bins, H-score.

Optical densities come from skimage.color.rgb2hed (Ruifrok & Johnston colour deconvolution).
Its unit is ln-OD divided by ln(1e6), i.e. about one sixth of the usual log10 OD, so the
thresholds below look small next to QuPath-style values (0.2 / 0.4 / 0.6 log10 OD).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.color import rgb2hed

from .tissue import tissue_mask, to_rgb

COUNT_KEYS = ("tissue_px", "negative_px", "weak_px", "moderate_px", "strong_px")


def hdab_od(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and DAB optical density (HxW float32 each, >= 0) of an RGB(A) uint8 image."""
    hed = rgb2hed(to_rgb(np.asarray(rgb)))
    return hed[..., 0].astype(np.float32), hed[..., 2].astype(np.float32)


@dataclass(frozen=True)
class DabThresholds:
    """Lower bounds of the weak, moderate and strong DAB bins, in rgb2hed DAB OD.

    Defaults calibrated on skimage.data.immunohistochemistry() (colon, membranous DAB):
    weak = 0.065, between Otsu's threshold of DAB OD over the whole image (0.062) and over its
    non-white pixels (grey < 220: 0.068), so "weak" starts where brown separates from blue;
    moderate = 0.10 and strong = 0.14, the 50th (0.099) and 85th (0.138) percentiles of DAB OD
    among those positive pixels, so the bins hold about 50 / 35 / 15 % of them and membranes
    come out strong. Over that image's tissue mask this gives 37 % weak, 23 % moderate, 10 %
    strong (70 % positive, H-score 112). On H&E (cmu-1-small-region.svs) eosin and dense
    keratin leak into the DAB channel (12 % "positive" over the whole slide), which is why weak
    is not set lower.
    """

    weak: float = 0.065
    moderate: float = 0.10
    strong: float = 0.14

    def __post_init__(self) -> None:
        if not 0 <= self.weak <= self.moderate <= self.strong:
            raise ValueError(f"need 0 <= weak <= moderate <= strong, got {self}")


def dab_tile_counts(
    rgb: np.ndarray,
    tissue: np.ndarray | None = None,
    thresholds: DabThresholds = DabThresholds(),
) -> dict[str, int]:
    """Pixel counts of a tile's tissue by DAB intensity bin.

    Keys: tissue_px, negative_px, weak_px, moderate_px, strong_px; the last four add up to
    tissue_px. tissue: boolean HxW mask; None computes tissue_mask() on the tile.
    """
    image = np.asarray(rgb)
    mask = tissue_mask(image) if tissue is None else np.asarray(tissue, bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"tissue mask shape {mask.shape} != image shape {image.shape[:2]}")
    _, dab = hdab_od(image)
    values = dab[mask]
    edges = [thresholds.weak, thresholds.moderate, thresholds.strong]
    bins = np.bincount(np.digitize(values, edges), minlength=4)
    return {
        "tissue_px": int(values.size),
        "negative_px": int(bins[0]),
        "weak_px": int(bins[1]),
        "moderate_px": int(bins[2]),
        "strong_px": int(bins[3]),
    }


def h_score(weak_px: int, moderate_px: int, strong_px: int, tissue_px: int) -> float:
    """H-score = 1 x %weak + 2 x %moderate + 3 x %strong of tissue pixels, in 0..300."""
    if tissue_px <= 0:
        return 0.0
    return 100.0 * (weak_px + 2 * moderate_px + 3 * strong_px) / tissue_px


def positive_fraction(counts: dict[str, int]) -> float:
    """Fraction of tissue pixels at least weakly DAB positive (0.0 without tissue)."""
    tissue = counts["tissue_px"]
    if tissue <= 0:
        return 0.0
    return (counts["weak_px"] + counts["moderate_px"] + counts["strong_px"]) / tissue
