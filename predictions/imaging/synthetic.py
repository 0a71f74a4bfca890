"""Synthetic tissue images with known content: the ground truth the analysis pipelines are checked on.

Plain Python and numpy (no Django, no Celery). Deliberately independent of the analysis code in
predictions/imaging/*: the stain vectors are defined here, from the literature, and nothing is
imported from the modules under test.

Physics (Beer-Lambert, optical density in log10 units): a pixel's intensity in channel c is

    I_c = I0_c * 10 ** (-sum_s C_s * v_s[c])

where v_s is the unit-norm (L2) OD vector of stain s and C_s >= 0 its concentration, so a pixel's
OD vector is sum_s C_s v_s. I0 is the glass (default (243, 241, 245): real glass is slightly
off-white). Gaussian sensor noise (sigma 1.5 grey levels, seeded) is added and values are
rounded and clipped to 0..255; pixels outside tissue are glass, I0 plus noise.

Coordinates in the truth are level-0 pixels, with pixel (column j, row i) centred at (x=j, y=i);
areas are in µm² (and px where named so). Everything is deterministic from a seed: each case
draws from its own generator, seeded by (seed, crc32(name)), so the --fast subset produces the
very same images as the full set for the cases they share.

Files are tiled (256 x 256), pyramidal, zlib-compressed (lossless) TIFFs with XResolution /
YResolution in pixels per centimetre: OpenSlide 4.0.1's generic-tiff reader derives
openslide.mpp-x / mpp-y from them (checked: 0.5 µm/px comes back), so no SVS disguise is needed.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from scipy import ndimage

DEFAULT_WHITE: tuple[int, int, int] = (243, 241, 245)
DEFAULT_MPP = 0.5
TILE_SIDE = 1024
TILE = 256            # TIFF tile size
MIN_LEVEL_SIDE = 512  # pyramid stops once the longer side is at most this


def _unit(v: Iterable[float]) -> np.ndarray:
    a = np.asarray(list(v), dtype=np.float64)
    return a / np.linalg.norm(a)


def angle_deg(a: Iterable[float], b: Iterable[float]) -> float:
    """Angle in degrees between two OD vectors."""
    return float(np.degrees(np.arccos(np.clip(_unit(a) @ _unit(b), -1.0, 1.0))))


def _rotate_towards(v: np.ndarray, target: Iterable[float], degrees: float) -> np.ndarray:
    """v rotated by `degrees` in the plane of v and target, towards target (unit norm)."""
    v = _unit(v)
    t = _unit(target)
    w = t - (t @ v) * v
    w /= np.linalg.norm(w)
    theta = math.radians(degrees)
    return _unit(math.cos(theta) * v + math.sin(theta) * w)


_HEMATOXYLIN = _unit((0.650, 0.704, 0.286))
_EOSIN = _unit((0.072, 0.990, 0.105))
_DAB = _unit((0.268, 0.570, 0.776))

#: Unit-norm log10 OD vectors. "hematoxylin", "eosin", "dab" are the Ruifrok & Johnston reference
#: vectors; "hematoxylin_variant" is hematoxylin rotated 6° towards blue-absorbing (a bluer, more
#: purple haematoxylin), "dab_variant" DAB rotated 8° towards blue absorption (a darker, more
#: brown-black DAB): both exercise per-slide stain estimation.
STAIN_VECTORS: dict[str, np.ndarray] = {
    "hematoxylin": _HEMATOXYLIN,
    "eosin": _EOSIN,
    "dab": _DAB,
    "hematoxylin_variant": _rotate_towards(_HEMATOXYLIN, (0.55, 0.70, 0.45), 6.0),
    "dab_variant": _rotate_towards(_DAB, (0.20, 0.40, 0.90), 8.0),
}

#: Eosin vectors H&E tiles are made with: the reference, then a red-shifted variant (eosin that also
#: absorbs red, a pinker-purple phloxine-like hue; 14° from the reference) and a blue-shifted one
#: (absorbs more blue, a more orange-red eosin; 12° away). Both are >= 39° from DAB.
EOSIN_VARIANTS: list[np.ndarray] = [
    _EOSIN,
    _unit((0.30, 0.94, 0.15)),
    _unit((0.00, 0.95, 0.30)),
]


def stain_angles() -> dict[str, float]:
    """Angles (degrees) the generator relies on, for printing and assertions."""
    out: dict[str, float] = {}
    for i, e in enumerate(EOSIN_VARIANTS):
        out[f"e{i}-eosin"] = angle_deg(e, _EOSIN)
        out[f"e{i}-dab"] = angle_deg(e, _DAB)
        out[f"e{i}-hematoxylin"] = angle_deg(e, _HEMATOXYLIN)
    out["hematoxylin_variant-hematoxylin"] = angle_deg(STAIN_VECTORS["hematoxylin_variant"], _HEMATOXYLIN)
    out["dab_variant-dab"] = angle_deg(STAIN_VECTORS["dab_variant"], _DAB)
    out["dab_variant-hematoxylin"] = angle_deg(STAIN_VECTORS["dab_variant"], _HEMATOXYLIN)
    return out


def _check_vectors() -> None:
    a = stain_angles()
    for i in (1, 2):
        assert 10.0 <= a[f"e{i}-eosin"] <= 26.0, a
        assert a[f"e{i}-dab"] >= 35.0, a
    assert 5.0 <= a["hematoxylin_variant-hematoxylin"] <= 8.0, a
    assert 6.0 <= a["dab_variant-dab"] <= 10.0, a


_check_vectors()


# -- physics --------------------------------------------------------------------------------------
def beer_lambert(
    concentrations: dict[str, np.ndarray],
    vectors: dict[str, np.ndarray],
    white: tuple[int, int, int] = DEFAULT_WHITE,
    noise: float = 1.5,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """RGB uint8 image (HxWx3) of stains mixed by Beer-Lambert's law.

    concentrations: stain name -> HxW array of concentrations (>= 0; log10 OD along the stain's
    vector); vectors: stain name -> OD vector, normalised here to unit L2 norm. Every name in
    concentrations must be in vectors. I_c = white_c * 10^(-sum_s C_s v_s[c]) plus Gaussian noise
    of `noise` grey levels (rng; a fixed seed when None), rounded and clipped to 0..255.
    """
    if not concentrations:
        raise ValueError("at least one stain concentration map is needed")
    shapes = {np.shape(c) for c in concentrations.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"concentration maps must be 2-D and of one shape, got {shapes}")
    h, w = next(iter(shapes))
    rng = rng if rng is not None else np.random.default_rng(0)
    units = {name: _unit(vectors[name]) for name in concentrations}
    out = np.empty((h, w, 3), dtype=np.uint8)
    od = np.empty((h, w), dtype=np.float32)
    tmp = np.empty((h, w), dtype=np.float32)
    minus_ln10 = np.float32(-math.log(10.0))
    maps = {name: np.asarray(conc, dtype=np.float32) for name, conc in concentrations.items()}
    for c in range(3):
        od.fill(0)
        for name, conc in maps.items():
            if units[name][c] != 0:
                np.multiply(conc, np.float32(units[name][c]), out=tmp)
                od += tmp
        od *= minus_ln10
        np.exp(od, out=od)
        od *= np.float32(white[c])
        if noise:
            rng.standard_normal(dtype=np.float32, out=tmp)
            tmp *= np.float32(noise)
            od += tmp
        np.rint(od, out=od)
        np.clip(od, 0, 255, out=od)
        out[..., c] = od
    return out


def unmix(rgb: np.ndarray, vectors: list[np.ndarray],
          white: tuple[int, int, int] = DEFAULT_WHITE) -> np.ndarray:
    """Concentrations (HxWxN float32) of N <= 3 stains by least squares on log10 OD.

    The inverse of beer_lambert (without the noise); with fewer than three vectors a residual
    vector orthogonal to them completes the basis and its concentration is dropped. Provided for
    tests and checks of this module only.
    """
    basis = [_unit(v) for v in vectors]
    if len(basis) == 2:
        basis.append(_unit(np.cross(basis[0], basis[1])))
    m = np.stack(basis, axis=0)  # N x 3
    inv = np.linalg.pinv(m).astype(np.float32)  # 3 x N
    rgb = np.asarray(rgb)
    out = np.zeros(rgb.shape[:2] + (len(vectors),), dtype=np.float32)
    levels = np.maximum(np.arange(256, dtype=np.float64), 1.0)
    for c in range(3):
        lut = (-np.log10(levels / white[c])).astype(np.float32)
        od = lut[rgb[..., c]]
        for s in range(len(vectors)):
            out[..., s] += od * inv[c, s]
    return out


# -- random fields --------------------------------------------------------------------------------
def _bspline_matrix(n_out: int, step: float, n_in: int):
    """Sparse (n_out x n_in) matrix of cubic B-spline weights: output i samples the grid at i/step + 1."""
    from scipy import sparse

    pos = np.arange(n_out) / step + 1.0
    base = np.floor(pos).astype(np.int64)
    t = pos - base
    weights = np.stack([(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6,
                        (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6], axis=1)
    cols = np.stack([base - 1, base, base + 1, base + 2], axis=1)
    rows = np.repeat(np.arange(n_out), 4)
    return sparse.csr_matrix((weights.ravel(), (rows, cols.ravel())), shape=(n_out, n_in))


def smooth_field(shape: tuple[int, int], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [0, 1] (float32) whose features are about scale_px pixels across.

    White noise on a grid of step scale_px / 2, Gaussian-smoothed, then upsampled by a separable
    cubic B-spline (sparse matrices, so a 6000 x 4000 field costs well under a second).
    """
    h, w = shape
    step = max(1.0, scale_px / 2.0)
    gh, gw = int(math.ceil(h / step)) + 4, int(math.ceil(w / step)) + 4
    grid = ndimage.gaussian_filter(rng.standard_normal((gh, gw)), 1.0).astype(np.float32)
    ry = _bspline_matrix(h, step, gh).astype(np.float32)
    rx = _bspline_matrix(w, step, gw).astype(np.float32)
    out = np.asarray((rx @ (ry @ grid).T).T, dtype=np.float32)
    lo, hi = float(out.min()), float(out.max())
    out -= lo
    out *= np.float32(1.0 / (hi - lo or 1.0))
    return out


# -- nuclei ---------------------------------------------------------------------------------------
@dataclass
class Nucleus:
    """One nucleus: centre (px), semi-axes (px), orientation (rad), hematoxylin concentration."""

    x: float
    y: float
    a: float
    b: float
    theta: float
    conc: float

    @property
    def bound(self) -> float:
        return self.a

    def area_um2(self, mpp: float) -> float:
        return math.pi * self.a * self.b * mpp * mpp


def _random_nucleus(rng: np.random.Generator, mpp: float, area_um2: float | None = None,
                    aspect: float | None = None) -> Nucleus:
    area = rng.uniform(25.0, 90.0) if area_um2 is None else area_um2
    asp = rng.uniform(1.0, 1.6) if aspect is None else aspect
    a = math.sqrt(area * asp / math.pi) / mpp
    b = math.sqrt(area / (asp * math.pi)) / mpp
    return Nucleus(0.0, 0.0, a, b, rng.uniform(0, math.pi), rng.uniform(0.5, 1.1))


class _Placer:
    """Random sequential placement of discs that keep a clearance between their boundaries."""

    def __init__(self, shape: tuple[int, int], clearance_px: float, allowed: np.ndarray | None = None):
        self.h, self.w = shape
        self.clearance = clearance_px
        self.allowed = allowed
        self.discs: list[tuple[float, float, float]] = []

    def fits(self, x: float, y: float, r: float) -> bool:
        edge = r + 2
        if x - edge < 0 or y - edge < 0 or x + edge > self.w - 1 or y + edge > self.h - 1:
            return False
        if self.allowed is not None:
            rows = slice(int(y - edge), int(math.ceil(y + edge)) + 1)
            cols = slice(int(x - edge), int(math.ceil(x + edge)) + 1)
            if not self.allowed[rows, cols].all():
                return False
        for (px, py, pr) in self.discs:
            if math.hypot(px - x, py - y) < r + pr + self.clearance:
                return False
        return True

    def place(self, r: float, rng: np.random.Generator, tries: int = 5000) -> tuple[float, float]:
        for _ in range(tries):
            x, y = rng.uniform(0, self.w), rng.uniform(0, self.h)
            if self.fits(x, y, r):
                self.discs.append((x, y, r))
                return x, y
        raise RuntimeError("could not place a nucleus: too crowded")


def _render_nuclei(shape: tuple[int, int], nuclei: list[Nucleus], texture: np.ndarray) -> np.ndarray:
    """Hematoxylin concentration of the nuclei (HxW float32): filled ellipses with a 1-px soft edge.

    Coverage of a pixel is clip(0.5 - d, 0, 1), d the (approximate) signed distance in px from the
    pixel centre to the ellipse boundary; concentration = conc * coverage * (1 + 0.15 * texture),
    texture in [-1, 1] (chromatin). Where nuclei overlap (touching pairs) the larger value wins.
    """
    h, w = shape
    out = np.zeros(shape, dtype=np.float32)
    for n in nuclei:
        r = n.a + 2
        x0, x1 = max(0, int(n.x - r)), min(w, int(math.ceil(n.x + r)) + 1)
        y0, y1 = max(0, int(n.y - r)), min(h, int(math.ceil(n.y + r)) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dx, dy = xx - n.x, yy - n.y
        c, s = math.cos(n.theta), math.sin(n.theta)
        u, v = dx * c + dy * s, -dx * s + dy * c
        rho = np.sqrt((u / n.a) ** 2 + (v / n.b) ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            grad = np.sqrt((u / n.a**2) ** 2 + (v / n.b**2) ** 2) / rho
        grad = np.where(rho < 1e-9, 1.0 / n.a, grad)
        dist = (rho - 1.0) / grad
        cov = np.clip(0.5 - dist, 0.0, 1.0)
        val = (n.conc * cov * (1.0 + 0.15 * texture[y0:y1, x0:x1])).astype(np.float32)
        np.maximum(out[y0:y1, x0:x1], val, out=out[y0:y1, x0:x1])
    return out


def _place_nuclei(shape: tuple[int, int], mpp: float, count: int, rng: np.random.Generator,
                  placer: _Placer | None = None,
                  allowed: np.ndarray | None = None) -> tuple[list[Nucleus], _Placer]:
    placer = placer or _Placer(shape, 3.0 / mpp, allowed)
    out = []
    for _ in range(count):
        n = _random_nucleus(rng, mpp)
        n.x, n.y = placer.place(n.bound, rng)
        out.append(n)
    return out, placer


def _touching_pairs(shape: tuple[int, int], mpp: float, pairs: int, rng: np.random.Generator,
                    placer: _Placer) -> tuple[list[Nucleus], list[tuple[int, int, float]]]:
    nuclei: list[Nucleus] = []
    links = []
    for _ in range(pairs):
        n1 = _random_nucleus(rng, mpp, area_um2=rng.uniform(45, 55), aspect=1.0)
        n2 = _random_nucleus(rng, mpp, area_um2=rng.uniform(45, 55), aspect=1.0)
        d = rng.uniform(0.85, 0.95) * (n1.a + n2.a)
        span = (d + n1.a + n2.a) / 2.0
        cx, cy = placer.place(span, rng)
        phi = rng.uniform(0, math.pi)
        # the pair's midpoint of its extent is (cx, cy); centres sit along phi
        off1 = span - n1.a
        off2 = span - n2.a
        n1.x, n1.y = cx - off1 * math.cos(phi), cy - off1 * math.sin(phi)
        n2.x, n2.y = cx + off2 * math.cos(phi), cy + off2 * math.sin(phi)
        links.append((len(nuclei), len(nuclei) + 1, d * mpp))
        nuclei += [n1, n2]
    return nuclei, links


def _nuclei_truth(nuclei: list[Nucleus], mpp: float) -> dict:
    return {
        "nuclei_count": len(nuclei),
        "nuclei": [{"x": round(n.x, 2), "y": round(n.y, 2), "area_um2": round(n.area_um2(mpp), 2)}
                   for n in nuclei],
    }


# -- cases ----------------------------------------------------------------------------------------
@dataclass
class Case:
    """One synthetic image and what it contains.

    kind: "nuclei" | "eosin_only" | "he" | "hdab" | "tissue". rgb: HxWx3 uint8. mpp: µm per level-0
    pixel. truth: JSON-serialisable figures (see make_cases).
    """

    name: str
    kind: str
    rgb: np.ndarray
    mpp: float
    truth: dict = field(default_factory=dict)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _vec(v: np.ndarray) -> list[float]:
    return [round(float(x), 6) for x in v]


def _eosin_tissue(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Eosin background 0.15-0.45: smooth low-frequency texture plus a finer fibrous component."""
    out = smooth_field(shape, 160, rng)
    out *= np.float32(0.75 * 0.30)
    mid = smooth_field(shape, 24, rng)
    mid *= np.float32(0.25 * 0.30)
    out += mid
    out += np.float32(0.15)
    return out


def _he_tile(name: str, kind: str, seed: int, mpp: float, *, eosin_index: int, n_nuclei: int,
             pairs: int = 0, h_vector: str = "hematoxylin") -> Case:
    rng = _rng(seed, name)
    shape = (TILE_SIDE, TILE_SIDE)
    eosin = _eosin_tissue(shape, rng)
    truth: dict = {"stain": "he"}
    conc = {"eosin": eosin}
    if kind != "eosin_only":
        placer = _Placer(shape, 3.0 / mpp)
        nuclei, links = _touching_pairs(shape, mpp, pairs, rng, placer) if pairs else ([], [])
        singles, _ = _place_nuclei(shape, mpp, n_nuclei, rng, placer)
        nuclei += singles
        texture = smooth_field(shape, 3.0 / mpp * 0.5, rng) * 2 - 1
        h_bg = 0.05 * smooth_field(shape, 120, rng)
        conc["hematoxylin"] = h_bg + _render_nuclei(shape, nuclei, texture)
        truth.update(_nuclei_truth(nuclei, mpp))
        if pairs:
            truth["touching_pairs"] = [{"a": a, "b": b, "distance_um": round(d, 3)} for a, b, d in links]
        truth["hematoxylin_vector"] = _vec(STAIN_VECTORS[h_vector])
    else:
        truth.update({"nuclei_count": 0, "nuclei": [], "hematoxylin_vector": None})
    vectors = {"eosin": EOSIN_VARIANTS[eosin_index], "hematoxylin": STAIN_VECTORS[h_vector]}
    rgb = beer_lambert(conc, vectors, rng=rng)
    truth.update({
        "eosin_vector": _vec(EOSIN_VARIANTS[eosin_index]),
        "eosin_variant": eosin_index,
        "dab_positive_fraction": 0.0,
        "dab_vector": None,
        "tissue_area_px": shape[0] * shape[1],
        "tissue_area_um2": round(shape[0] * shape[1] * mpp * mpp, 3),
    })
    return Case(name, kind, rgb, mpp, truth)


def _rounded_rect(shape: tuple[int, int], margin: int, radius: int) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    x0, x1, y0, y1 = margin, w - 1 - margin, margin, h - 1 - margin
    cx = np.clip(xx, x0 + radius, x1 - radius)
    cy = np.clip(yy, y0 + radius, y1 - radius)
    inside = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
    return inside & ((xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius)


# DAB intensity bins (log10 OD concentration), QuPath-style: weak / moderate / strong lower bounds.
DAB_BINS = (0.2, 0.4, 0.6)


def _hdab_tile(name: str, seed: int, mpp: float, *, target: float, dab_vector: str = "dab",
               n_nuclei: int = 60) -> Case:
    rng = _rng(seed, name)
    shape = (TILE_SIDE, TILE_SIDE)
    tissue = _rounded_rect(shape, 48, 96)
    h_bg = np.where(tissue, 0.08 + 0.12 * smooth_field(shape, 140, rng), 0).astype(np.float32)
    nuclei, _ = _place_nuclei(shape, mpp, n_nuclei, rng, allowed=tissue)
    texture = smooth_field(shape, 3.0 / mpp * 0.5, rng) * 2 - 1
    hema = h_bg + _render_nuclei(shape, nuclei, texture)
    dab = np.zeros(shape, dtype=np.float32)
    n_tissue = int(tissue.sum())
    if target > 0:
        blobs = smooth_field(shape, 90, rng)
        vals = blobs[tissue]
        k = int(round(target * n_tissue))       # exactly k pixels above the threshold
        thr = np.partition(vals, n_tissue - k)[n_tissue - k - 1] if k < n_tissue else -1.0
        mask = tissue & (blobs > thr)
        strength = smooth_field(shape, 40, rng)
        ranks = np.empty(int(mask.sum()), dtype=np.float64)
        ranks[np.argsort(strength[mask], kind="stable")] = (np.arange(ranks.size) + 0.5) / ranks.size
        dab[mask] = (0.35 + 0.85 * ranks**1.5).astype(np.float32)
    mask = dab > 0
    rgb = beer_lambert({"hematoxylin": hema, "dab": dab},
                       {"hematoxylin": STAIN_VECTORS["hematoxylin"], "dab": STAIN_VECTORS[dab_vector]},
                       rng=rng)
    c = dab[tissue]
    weak, moderate, strong = DAB_BINS
    truth = {
        "stain": "hdab",
        **_nuclei_truth(nuclei, mpp),
        "dab_target_fraction": target,
        "dab_positive_fraction": round(int(mask.sum()) / n_tissue, 6),
        "dab_weak_fraction": round(int(((c >= weak) & (c < moderate)).sum()) / n_tissue, 6),
        "dab_moderate_fraction": round(int(((c >= moderate) & (c < strong)).sum()) / n_tissue, 6),
        "dab_strong_fraction": round(int((c >= strong).sum()) / n_tissue, 6),
        "dab_bins_od": list(DAB_BINS),
        "tissue_area_px": n_tissue,
        "tissue_area_um2": round(n_tissue * mpp * mpp, 3),
        "tissue_bbox": {"x": 48, "y": 48, "w": TILE_SIDE - 96, "h": TILE_SIDE - 96},
        "hematoxylin_vector": _vec(STAIN_VECTORS["hematoxylin"]),
        "dab_vector": _vec(STAIN_VECTORS[dab_vector]),
        "eosin_vector": None,
    }
    return Case(name, "hdab", rgb, mpp, truth)


def _ellipse_mask(shape: tuple[int, int], cx: float, cy: float, a: float, b: float, theta: float,
                  out: np.ndarray) -> None:
    """OR a filled ellipse (pixel centres inside) into out, touching only its bounding window."""
    h, w = shape
    r = max(a, b) + 1
    x0, x1 = max(0, int(cx - r)), min(w, int(math.ceil(cx + r)) + 1)
    y0, y1 = max(0, int(cy - r)), min(h, int(math.ceil(cy + r)) + 1)
    dy = (np.arange(y0, y1, dtype=np.float64) - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float64) - cx)[None, :]
    c, s = math.cos(theta), math.sin(theta)
    # (u/a)^2 + (v/b)^2 <= 1 with u = dx c + dy s, v = -dx s + dy c, as A dx^2 + B dx dy + C dy^2
    qa, qb, qc = c * c / a**2 + s * s / b**2, 2 * c * s * (1 / a**2 - 1 / b**2), s * s / a**2 + c * c / b**2
    q = (qa * dx * dx + qc * dy * dy) + qb * (dx * dy)
    out[y0:y1, x0:x1] |= q <= 1.0


def _tissue_slide(name: str, seed: int, mpp: float) -> Case:
    rng = _rng(seed, name)
    w, h = 6000, 4000
    shape = (h, w)
    tissue = np.zeros(shape, dtype=bool)
    # Large pieces: unions of ellipses, each confined to its own zone (x0, y0, x1, y1).
    zones = [(250, 250, 2650, 2300), (3050, 300, 5750, 2450), (800, 2650, 3500, 3800)]
    for (zx0, zy0, zx1, zy1) in zones:
        zw, zh = zx1 - zx0, zy1 - zy0
        drawn = [(float(round(zx0 + zw / 2)), float(round(zy0 + zh / 2)), 1.0, 1.0, 0.0)]
        while len(drawn) < 8:
            # centred on a pixel inside an ellipse already drawn, so the piece stays in one piece,
            # and wholly inside the zone, so pieces stay apart
            a = rng.uniform(0.18, 0.42) * min(zw, zh)
            b = a * rng.uniform(0.45, 0.9)
            px, py, pa, pb, pt = drawn[int(rng.integers(len(drawn)))]
            rad, phi = math.sqrt(rng.uniform()) * 0.9, rng.uniform(0, 2 * math.pi)
            u, v = rad * pa * math.cos(phi), rad * pb * math.sin(phi)
            cx = float(round(px + u * math.cos(pt) - v * math.sin(pt)))
            cy = float(round(py + u * math.sin(pt) + v * math.cos(pt)))
            if cx - a < zx0 or cx + a > zx1 or cy - a < zy0 or cy + a > zy1:
                continue
            theta = rng.uniform(0, math.pi)
            _ellipse_mask(shape, cx, cy, a, b, theta, tissue)
            drawn.append((cx, cy, a, b, theta))
    # The small fragment, far from everything (drawn in its own small window).
    fx0, fy0 = 5380 + int(rng.integers(0, 80)), 3480 + int(rng.integers(0, 80))
    frag = np.zeros((100, 100), dtype=bool)
    fa, fb = rng.uniform(33, 35), rng.uniform(31, 34)   # ~3,200-3,700 px
    _ellipse_mask(frag.shape, 50.0, 50.0, fa, fb, rng.uniform(0, math.pi), frag)
    tissue[fy0 : fy0 + 100, fx0 : fx0 + 100] |= frag
    # Stain the tissue: eosin 0.15-0.45, light hematoxylin texture and a scatter of nuclei-like dots.
    outside = ~tissue
    eosin = _eosin_tissue(shape, rng)
    eosin[outside] = 0
    hema = smooth_field(shape, 60, rng)
    hema *= np.float32(0.10)
    hema += np.float32(0.04)
    hema[smooth_field(shape, 12, rng) > 0.72] += np.float32(0.45)
    hema[outside] = 0
    # Pen mark: a thick arc of green marker ink on glass, as a stain of fixed hue (its OD vector).
    pen_rgb = np.array([40.0, 140.0, 90.0])
    pen_od = -np.log10(pen_rgb / np.asarray(DEFAULT_WHITE, float))
    px0, py0, pw, ph = 3860, 2680, 1580, 160          # the window the stroke is drawn in
    x_start, y_mid, length, sag = 3900, 2760, 1500, 40
    pen = np.zeros((ph, pw), dtype=bool)
    for t in np.linspace(0, 1, 600):
        cx = x_start + length * t - px0
        cy = y_mid + sag * (4 * (t - 0.5) ** 2 - 1) + 20 - py0
        _ellipse_mask(pen.shape, cx, cy, 20, 20, 0.0, pen)
    pen &= ~tissue[py0 : py0 + ph, px0 : px0 + pw]
    pen_conc = np.zeros(shape, dtype=np.float32)
    pen_conc[py0 : py0 + ph, px0 : px0 + pw] = np.where(
        pen, np.linalg.norm(pen_od) * (0.9 + 0.2 * smooth_field(pen.shape, 200, rng)), 0)
    # Dust: small dark grey specks (3-12 µm) on glass, clear of tissue and pen.
    occupied = tissue[::8, ::8] | (pen_conc[::8, ::8] > 0)
    occupied = ndimage.binary_dilation(occupied, iterations=4)
    dust = np.zeros(shape, dtype=np.float32)
    specks = 0
    while specks < 36:
        r = max(rng.uniform(3, 12) / mpp / 2, 1.0)
        x, y = rng.uniform(40, w - 40), rng.uniform(40, h - 40)
        if occupied[int(y) // 8, int(x) // 8]:
            continue
        rr = int(math.ceil(r)) + 1
        y0, x0 = int(y) - rr, int(x) - rr
        m = np.zeros((2 * rr + 1, 2 * rr + 1), dtype=bool)
        _ellipse_mask(m.shape, x - x0, y - y0, r, r, 0.0, m)
        dust[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]][m] = rng.uniform(0.6, 1.2)
        specks += 1
    rgb = beer_lambert(
        {"eosin": eosin, "hematoxylin": hema, "pen": pen_conc, "dust": dust},
        {"eosin": STAIN_VECTORS["eosin"], "hematoxylin": STAIN_VECTORS["hematoxylin"], "pen": pen_od,
         "dust": np.ones(3)},
        rng=rng,
    )
    n_px = int(tissue.sum())
    labels, n_pieces = ndimage.label(tissue)
    frag_labels = set(np.unique(labels[fy0 : fy0 + 100, fx0 : fx0 + 100][frag]).tolist())
    n_large = n_pieces - len(frag_labels)
    fy, fx = np.nonzero(frag)
    fy, fx = fy + fy0, fx + fx0
    py_, px_ = np.nonzero(pen)
    py_, px_ = py_ + py0, px_ + px0
    f_px = int(frag.sum())
    truth = {
        "stain": "he",
        "tissue_area_px": n_px,
        "tissue_area_um2": round(n_px * mpp * mpp, 3),
        "pieces": int(n_pieces),
        "large_pieces": int(n_large),
        "fragment": {"x": int(fx.min()), "y": int(fy.min()), "w": int(fx.max() - fx.min() + 1),
                     "h": int(fy.max() - fy.min() + 1), "area_px": f_px,
                     "area_um2": round(f_px * mpp * mpp, 3)},
        "pen_mark": {"x": int(px_.min()), "y": int(py_.min()), "w": int(px_.max() - px_.min() + 1),
                     "h": int(py_.max() - py_.min() + 1), "rgb": [int(v) for v in pen_rgb]},
        "dust_specks": specks,
        "eosin_vector": _vec(STAIN_VECTORS["eosin"]),
        "hematoxylin_vector": _vec(STAIN_VECTORS["hematoxylin"]),
        "dab_vector": None,
    }
    return Case(name, "tissue", rgb, mpp, truth)


_H_VARIANT = "hematoxylin_variant"

#: name -> (builder(seed, mpp), in the --fast subset)
_CASES: dict[str, tuple[Callable[[int, float], Case], bool]] = {
    "nuclei_sparse": (partial(_he_tile, "nuclei_sparse", "nuclei", eosin_index=0, n_nuclei=40), True),
    "nuclei_dense": (partial(_he_tile, "nuclei_dense", "nuclei", eosin_index=0, n_nuclei=150,
                             h_vector=_H_VARIANT), False),
    "nuclei_touching": (partial(_he_tile, "nuclei_touching", "nuclei", eosin_index=0, n_nuclei=30, pairs=10),
                        True),
    **{f"eosin_only_e{i}": (partial(_he_tile, f"eosin_only_e{i}", "eosin_only", eosin_index=i, n_nuclei=0),
                            i == 0) for i in range(3)},
    **{f"he_e{i}": (partial(_he_tile, f"he_e{i}", "he", eosin_index=i, n_nuclei=60,
                            h_vector=_H_VARIANT if i == 2 else "hematoxylin"), i == 1) for i in range(3)},
    "hdab_0": (partial(_hdab_tile, "hdab_0", target=0.0), True),
    "hdab_10": (partial(_hdab_tile, "hdab_10", target=0.10), True),
    "hdab_50": (partial(_hdab_tile, "hdab_50", target=0.50), True),
    "hdab_10_dabvariant": (partial(_hdab_tile, "hdab_10_dabvariant", target=0.10, dab_vector="dab_variant"),
                           False),
    "tissue_fragments": (partial(_tissue_slide, "tissue_fragments"), True),
}


def case_names(fast: bool = False) -> list[str]:
    """Names of the cases make_cases returns, in order."""
    return [name for name, (_, in_fast) in _CASES.items() if in_fast or not fast]


def make_case(name: str, seed: int = 0, mpp: float = DEFAULT_MPP) -> Case:
    """One case by name (the same image make_cases gives for that name and seed)."""
    return _CASES[name][0](seed, mpp)


def make_cases(fast: bool = False, seed: int = 0) -> list[Case]:
    """The validation cases, deterministic from seed; fast: the CI subset.

    Truth keys: stain ("he" | "hdab"); nuclei_count and nuclei ([{x, y, area_um2}], centres in
    level-0 px, analytic ellipse areas); touching_pairs ([{a, b, distance_um}], indices into
    nuclei; a pair counts as two nuclei); dab_positive_fraction, dab_weak_fraction,
    dab_moderate_fraction, dab_strong_fraction (fractions of the tissue pixels with DAB
    concentration > 0, in [0.2, 0.4), [0.4, 0.6), >= 0.6 log10 OD); tissue_area_px,
    tissue_area_um2 (exact pixel count of the tissue drawn); fragment {x, y, w, h, area_px,
    area_um2}; pen_mark {x, y, w, h}; pieces; eosin_vector, hematoxylin_vector, dab_vector (the
    unit vectors used, or None).
    """
    return [make_case(name, seed) for name in case_names(fast)]


# -- files ----------------------------------------------------------------------------------------
def _downsample2(rgb: np.ndarray) -> np.ndarray:
    """Half-size level: 2 x 2 box mean (Pillow's reduce; a trailing odd row / column is averaged alone)."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).reduce(2))


def write_slide(path: str | os.PathLike, rgb: np.ndarray, mpp: float | None) -> Path:
    """Write rgb as a tiled (256 x 256), pyramidal, zlib-compressed (lossless) generic TIFF.

    The pixel size goes into XResolution / YResolution (pixels per cm, ResolutionUnit=centimeter)
    on every level, which OpenSlide 4.0.1 reports as openslide.mpp-x / mpp-y. Levels halve until
    the longer side is at most 512 px. A suffix other than .tif / .tiff becomes .tiff; the path
    actually written is returned.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        path = path.with_suffix(".tiff")
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"need an HxWx3 array, got {rgb.shape}")
    tmp = path.with_name(path.name + ".partial")
    level, factor = rgb, 1
    with tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes * 4 // 3 > 2**31) as tw:
        while True:
            kwargs = {}
            if mpp:
                ppcm = 1e4 / (mpp * factor)
                kwargs = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            tw.write(level, tile=(TILE, TILE), photometric="rgb", planarconfig="contig",
                     compression="zlib", compressionargs={"level": 1},
                     subfiletype=0 if factor == 1 else 1, metadata=None, **kwargs)
            if max(level.shape[:2]) <= MIN_LEVEL_SIDE:
                break
            level, factor = _downsample2(level), factor * 2
    os.replace(tmp, path)
    return path


def write_validation_set(folder: str | os.PathLike, fast: bool = False, seed: int = 0,
                         log: Callable[[str], None] | None = None) -> list[tuple[Path, Case]]:
    """Generate the cases, write each as <name>.tiff in folder, and write folder/truth.json.

    truth.json: {"seed", "fast", "white", "stain_vectors", "eosin_variants", "cases": [{name, file,
    kind, mpp, width, height, truth}]}; file is relative to folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Case]] = []
    for name in case_names(fast):
        started = time.monotonic()
        case = make_case(name, seed)
        path = write_slide(folder / f"{name}.tiff", case.rgb, case.mpp)
        written.append((path, case))
        if log:
            log(f"{name}: {time.monotonic() - started:.2f} s")
    doc = {
        "seed": seed,
        "fast": fast,
        "white": list(DEFAULT_WHITE),
        "stain_vectors": {k: _vec(v) for k, v in STAIN_VECTORS.items()},
        "eosin_variants": [_vec(v) for v in EOSIN_VARIANTS],
        "cases": [
            {"name": c.name, "file": p.name, "kind": c.kind, "mpp": c.mpp,
             "width": int(c.rgb.shape[1]), "height": int(c.rgb.shape[0]), "truth": c.truth}
            for p, c in written
        ],
    }
    tmp = folder / "truth.json.partial"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, folder / "truth.json")
    return written
