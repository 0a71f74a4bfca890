"""Stains in optical density: per-slide stain vectors, colour deconvolution, DAB intensity bins.

Units. Optical density is log10: OD = -log10(I / I0) per RGB channel, with I0 the slide's own
glass (background) intensity, so glass is OD 0 whatever the scanner's white balance. A stain is a
unit-length OD vector (Beer-Lambert: a pixel's OD is the sum of concentration x vector over its
stains) and a stain's "OD" below is that concentration. These are the units of QuPath's
"Hematoxylin OD" / "DAB OD", so the customary thresholds apply as they are (DAB 0.2 / 0.4 / 0.6
for weak / moderate / strong).

Per-slide stain vectors (Macenko et al., ISBI 2009): the OD vectors of a slide's stained pixels
lie in a plane spanned by its two stains; the directions at the two angular extremes of that
plane (1st and 99th percentile) are the stains. Stain vectors drift between labs, batches and
scanners (an H&E slide's eosin can sit 20-30° from the textbook vector), and deconvolving with
the wrong vectors leaks one stain into another, which is what made eosin read as "DAB". The
estimate is named by the nearest reference vector and guarded:
- too few stained pixels: the reference vectors are used, and the estimate says so;
- only one stain present (the two extremes closer than MIN_SEPARATION_DEG): that stain is taken
  from the slide, the other one from the reference, and the second stain is "none";
- a second stain with too few pixels of its own (MIN_SECOND_STAIN_FRACTION): "none" too, so a
  few mixed pixels never decide what a slide's second stain is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .tissue import to_rgb

# Reference stain vectors (Ruifrok & Johnston 2001, as in QuPath and scikit-image), unit length.
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
EOSIN = np.array([0.072, 0.990, 0.105])
DAB = np.array([0.268, 0.570, 0.776])
REFERENCE = {"hematoxylin": HEMATOXYLIN / np.linalg.norm(HEMATOXYLIN),
             "eosin": EOSIN / np.linalg.norm(EOSIN),
             "dab": DAB / np.linalg.norm(DAB)}

# A pixel takes part in the stain estimate when its OD vector is at least this long (Macenko's
# beta): paler pixels are dominated by noise and glass.
STAINED_OD = 0.15
# Below this many stained pixels the estimate is not trusted and the references are used.
MIN_STAINED_PIXELS = 2_000
# Angular percentile of the extremes (Macenko's alpha, in percent).
EXTREME_PERCENTILE = 1.0
# Two extremes closer than this are one stain, not two.
MIN_SEPARATION_DEG = 8.0
# The second stain must dominate at least this fraction of the stained pixels to be estimated.
MIN_SECOND_STAIN_FRACTION = 0.01
# A second stain further than this from the DAB reference is not DAB (issue of record: H&E's
# eosin sits about 50° from DAB; estimated DAB vectors of real IHC slides within about 10°).
MAX_DAB_ANGLE_DEG = 15.0
# An estimated hematoxylin further than this from the reference is not trusted.
MAX_HEMATOXYLIN_ANGLE_DEG = 25.0
# Glass whiter than the reference white of 255 is impossible; a slide without glass in view
# (a crop of tissue) is given this white.
DEFAULT_WHITE = (255.0, 255.0, 255.0)


def angle_deg(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def optical_density(rgb: np.ndarray, white=DEFAULT_WHITE) -> np.ndarray:
    """log10 OD per channel (HxWx3 float32, >= 0) of an RGB(A) uint8 image, relative to white."""
    image = to_rgb(np.asarray(rgb)).astype(np.float32)
    white = np.asarray(white, np.float32)
    od = -np.log10(np.maximum(image, 1.0) / white)
    return np.maximum(od, 0.0, out=od)


def estimate_white(rgb: np.ndarray, tissue: np.ndarray, min_glass_fraction: float = 0.01) -> tuple[float, float, float]:
    """The glass intensity of a slide, or 255 when too little glass is in view.

    rgb is a low-resolution image of the whole slide and tissue its tissue mask. Glass is what is
    outside the tissue, unsaturated and bright; pixels OpenSlide paints white outside the scanned
    area (exactly 255) are left out. The 95th percentile per channel, not the median: pale
    tissue the mask left out is darker than glass, never brighter, so the brightest glass is the
    cleanest estimate (noise moves it by a grey level or two).
    """
    image = to_rgb(np.asarray(rgb))
    hi = image.max(axis=2).astype(np.float32)
    sat = np.where(hi > 0, (hi - image.min(axis=2)) / np.maximum(hi, 1), 0)
    glass = ~np.asarray(tissue, bool) & (sat <= 0.05) & (hi >= 180) & ~np.all(image == 255, axis=2)
    if glass.sum() < max(16, min_glass_fraction * glass.size):
        return DEFAULT_WHITE
    return tuple(float(v) for v in np.percentile(image[glass], 95, axis=0))


@dataclass
class StainEstimate:
    """A slide's stain vectors, how they were found, and what the second stain looks like.

    JSON-serialisable (kept with the slide's results). second_stain: "dab", "eosin", "other" or
    "none" (not present, or too little of it to tell).
    """

    hematoxylin: list[float]
    second: list[float]
    second_stain: str
    white: list[float]
    method: str                      # "estimated" or "reference"
    stained_pixels: int = 0
    angles: dict[str, float] = field(default_factory=dict)
    note: str = ""
    # 99th percentile of hematoxylin OD over the stained pixels: how dark this slide's nuclei
    # are stained, for thresholds scaled per slide (0 when unknown).
    hematoxylin_p99: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "StainEstimate":
        return cls(**data)

    @classmethod
    def reference(cls, second: str = "dab", white=DEFAULT_WHITE, note: str = "") -> "StainEstimate":
        vector = REFERENCE[second if second in REFERENCE else "eosin"]
        return cls(list(REFERENCE["hematoxylin"]), list(vector), "none", list(white), "reference", note=note)

    @property
    def dab_mismatch(self) -> bool:
        """True when the slide shows a second stain and it is not DAB."""
        return self.second_stain not in ("dab", "none")

    def vectors_for(self, second: str) -> np.ndarray:
        """The 3x3 stain matrix (rows: hematoxylin, second stain, residual) for deconvolution.

        second: "dab" or "eosin": the slide's own second stain when it is that stain, else the
        reference vector of that stain (e.g. an IHC slide without DAB staining).
        """
        hema = np.asarray(self.hematoxylin, float)
        other = np.asarray(self.second, float) if self.second_stain == second else REFERENCE[second]
        return stain_matrix(hema, other)


    def own_matrix(self) -> np.ndarray:
        """The stain matrix with the slide's own second stain (reference eosin when it has none)."""
        hema = np.asarray(self.hematoxylin, float)
        other = REFERENCE["eosin"] if self.second_stain == "none" else np.asarray(self.second, float)
        return stain_matrix(hema, other)


def stain_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Rows: the two unit stain vectors and a third, orthogonal to both, for what neither explains."""
    first = first / np.linalg.norm(first)
    second = second / np.linalg.norm(second)
    # Orthogonal to both (signs kept: folding it into positive values would make it nearly
    # parallel to hematoxylin and the matrix ill-conditioned).
    residual = np.cross(first, second)
    residual = residual / np.linalg.norm(residual)
    return np.stack([first, second, residual])


def concentrations(od: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Stain concentrations (..., 3) from OD (..., 3): solves od = c @ matrix per pixel."""
    return od @ np.linalg.inv(matrix).astype(np.float32)


def _nearest(vector: np.ndarray, names=("hematoxylin", "eosin", "dab")) -> tuple[str, float]:
    angles = {n: angle_deg(vector, REFERENCE[n]) for n in names}
    name = min(angles, key=angles.get)
    return name, angles[name]


def estimate_stains(rgb_pixels: np.ndarray, white=DEFAULT_WHITE, max_pixels: int = 400_000,
                    seed: int = 0) -> StainEstimate:
    """The stain vectors of a slide from a sample of its tissue pixels (N x 3 uint8, or an image).

    Deterministic for the same pixels (a seeded subsample when there are more than max_pixels).
    """
    pixels = to_rgb(np.asarray(rgb_pixels).reshape(-1, 1, 3)).reshape(-1, 3)
    od = optical_density(pixels.reshape(-1, 1, 3), white).reshape(-1, 3).astype(np.float64)
    od = od[np.linalg.norm(od, axis=1) >= STAINED_OD]
    if len(od) > max_pixels:
        od = od[np.random.default_rng(seed).choice(len(od), max_pixels, replace=False)]
    estimate = _estimate_vectors(od, [round(float(v), 2) for v in white])
    if len(od):
        hema = concentrations(od, estimate.own_matrix())[:, 0]
        estimate.hematoxylin_p99 = round(float(np.percentile(hema, 99)), 4)
    return estimate


def _estimate_vectors(od: np.ndarray, white: list[float]) -> StainEstimate:
    if len(od) < MIN_STAINED_PIXELS:
        return StainEstimate.reference(white=white, note=(
            f"Too few stained pixels ({len(od):,}) to estimate this slide's stains; "
            "reference vectors used."))
    # The plane of the two main directions (eigenvectors of the OD covariance about the origin,
    # as Macenko: the stains mix by addition, so the plane goes through OD 0).
    _, vectors = np.linalg.eigh(od.T @ od / len(od))
    plane = vectors[:, [2, 1]]
    if plane[:, 0].sum() < 0:
        plane[:, 0] *= -1
    projected = od @ plane
    phi = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(phi, [EXTREME_PERCENTILE, 100 - EXTREME_PERCENTILE])
    ends = [plane @ np.array([np.cos(a), np.sin(a)]) for a in (lo, hi)]
    ends = [_unit_stain(v) for v in ends]
    separation = angle_deg(*ends)
    angles: dict[str, float] = {"separation": round(separation, 2)}
    count = int(len(od))
    if separation < MIN_SEPARATION_DEG:
        # One stain. Its direction is the mean direction of the stained pixels.
        direction = (od / np.linalg.norm(od, axis=1, keepdims=True)).mean(axis=0)
        direction /= np.linalg.norm(direction)
        name, angle = _nearest(direction)
        angles[f"{name}_to_reference"] = round(angle, 2)
        if name == "hematoxylin" and angle <= MAX_HEMATOXYLIN_ANGLE_DEG:
            return StainEstimate(_round(direction), _round(REFERENCE["eosin"]), "none", white, "estimated",
                                 count, angles, "One stain found: hematoxylin only.")
        # Not hematoxylin: the slide's stain is kept as its second stain, hematoxylin is the reference.
        stain = name if name != "hematoxylin" else "other"
        return StainEstimate(_round(REFERENCE["hematoxylin"]), _round(direction), stain, white, "estimated",
                             count, angles, f"One stain found ({stain}), no hematoxylin.")
    to_h = [angle_deg(v, REFERENCE["hematoxylin"]) for v in ends]
    h_index = int(np.argmin(to_h))
    hema, second = ends[h_index], ends[1 - h_index]
    angles["hematoxylin_to_reference"] = round(to_h[h_index], 2)
    note = []
    if to_h[h_index] > MAX_HEMATOXYLIN_ANGLE_DEG:
        hema = REFERENCE["hematoxylin"]
        note.append("no stain close to hematoxylin; reference hematoxylin used")
    # How many pixels are mostly second stain: closer in angle to it than to hematoxylin.
    unit = od / np.linalg.norm(od, axis=1, keepdims=True)
    dominant = float(np.mean(unit @ second > unit @ hema))
    angles["dab_angle"] = round(angle_deg(second, REFERENCE["dab"]), 2)
    angles["eosin_angle"] = round(angle_deg(second, REFERENCE["eosin"]), 2)
    if dominant < MIN_SECOND_STAIN_FRACTION:
        note.append(f"second stain on only {dominant:.1%} of stained pixels: too little to estimate")
        return StainEstimate(_round(hema), _round(REFERENCE["eosin"]), "none", white, "estimated",
                             count, angles, "; ".join(note).capitalize() + ".")
    if angles["dab_angle"] <= MAX_DAB_ANGLE_DEG:
        stain = "dab"
    elif int(np.argmax(second)) == 1:
        # Absorbs green most, i.e. looks pink to red-purple: eosin's family (DAB, brown, absorbs
        # blue most). Real eosins sit 20-30° from the textbook vector, so the angle alone cannot
        # name them.
        stain = "eosin"
    else:
        stain = "other"
    note.append(f"second stain {stain}, {angles['dab_angle']:.0f}° from DAB")
    return StainEstimate(_round(hema), _round(second), stain, white, "estimated", count, angles,
                         "; ".join(note).capitalize() + ".")


def _unit_stain(vector: np.ndarray) -> np.ndarray:
    """A direction of the OD plane as a stain vector: non-negative, unit length."""
    vector = -vector if vector.sum() < 0 else vector
    vector = np.clip(vector, 1e-6, None)
    return vector / np.linalg.norm(vector)


def _round(vector) -> list[float]:
    return [round(float(v), 5) for v in vector]


# -- DAB --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DabThresholds:
    """Lower bounds of the weak, moderate and strong DAB bins, in DAB OD (log10, unit vectors).

    The customary values of positive-pixel counting (e.g. QuPath's defaults of 0.2 / 0.4 / 0.6),
    not fitted to any image.
    """

    weak: float = 0.2
    moderate: float = 0.4
    strong: float = 0.6

    def __post_init__(self) -> None:
        if not 0 <= self.weak <= self.moderate <= self.strong:
            raise ValueError(f"need 0 <= weak <= moderate <= strong, got {self}")


COUNT_KEYS = ("tissue_px", "negative_px", "weak_px", "moderate_px", "strong_px")

# A pixel inside the tissue mask counts as tissue when its OD vector is at least this long:
# lumina and cracks inside the mask are glass (OD ~ 0), the palest counterstain is ~0.05 and up.
GLASS_OD = 0.03


def hdab(rgb: np.ndarray, stains: StainEstimate) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hematoxylin OD, DAB OD (HxW float32 each) and the OD length of an RGB tile."""
    od = optical_density(rgb, stains.white)
    c = concentrations(od, stains.vectors_for("dab").astype(np.float32))
    return c[..., 0], c[..., 1], np.linalg.norm(od, axis=2)


def dab_tile_counts(rgb: np.ndarray, tissue: np.ndarray, stains: StainEstimate,
                    thresholds: DabThresholds = DabThresholds()) -> dict[str, int]:
    """Pixel counts of a tile's tissue by DAB intensity bin.

    tissue: boolean HxW mask of the slide's tissue over this tile; glass inside it is left out.
    Keys: tissue_px, negative_px, weak_px, moderate_px, strong_px (the last four add up).
    """
    image = np.asarray(rgb)
    mask = np.asarray(tissue, bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"tissue mask shape {mask.shape} != image shape {image.shape[:2]}")
    _, dab, length = hdab(image, stains)
    values = dab[mask & (length >= GLASS_OD)]
    bins = np.bincount(np.digitize(values, [thresholds.weak, thresholds.moderate, thresholds.strong]),
                       minlength=4)
    return {"tissue_px": int(values.size), "negative_px": int(bins[0]), "weak_px": int(bins[1]),
            "moderate_px": int(bins[2]), "strong_px": int(bins[3])}


def h_score(weak_px: int, moderate_px: int, strong_px: int, tissue_px: int) -> float:
    """H-score = 1 x %weak + 2 x %moderate + 3 x %strong of tissue pixels, in 0..300."""
    if tissue_px <= 0:
        return 0.0
    return 100.0 * (weak_px + 2 * moderate_px + 3 * strong_px) / tissue_px


def positive_fraction(counts: dict[str, int]) -> float | None:
    """Fraction of tissue pixels at least weakly DAB positive (None without tissue)."""
    tissue = counts["tissue_px"]
    if tissue <= 0:
        return None
    return (counts["weak_px"] + counts["moderate_px"] + counts["strong_px"]) / tissue
