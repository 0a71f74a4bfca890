"""Train the demo tissue classifier: one H&E slide plus synthetic tiles, labelled by a fixed rule.

    python predictions/demo_model/train.py --slide ../shared/data/slides/cmu-1-small-region.svs \
        --out predictions/demo_model/

Writes tissue_classifier_demo.pt (TorchScript) and model.json (manifest and model card) into
--out. The model imitates a rule built on the classical image analysis of predictions/imaging/
so that the model-inference path has a real model to run; it is not a diagnostic model. The rule,
per 64 x 64 px tile at 2 µm/px (256 x 256 px at 0.5 µm/px):

- background: less than half of the tile is tissue (tissue_mask);
- cellular: nuclei (segment_nuclei on hematoxylin OD, with the slide's own stain vectors and the
  built-in nuclei pipeline's thresholds scaled to the slide) cover at least CELLULAR_NUCLEAR_FRACTION
  of the tile's tissue pixels;
- stroma: the other tissue tiles.

The cut is absolute (the same on every slide), never relative to one slide's tiles. README.md
beside this file gives the data, the split and the results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):
    # Run as a script: make the repository root importable for predictions.imaging.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from predictions.imaging.nuclei import NucleusSettings, segment_nuclei  # noqa: E402
from predictions.imaging.stain import (  # noqa: E402
    concentrations,
    estimate_stains,
    estimate_white,
    optical_density,
)
from predictions.imaging.synthetic import (  # noqa: E402
    DEFAULT_WHITE,
    EOSIN_VARIANTS,
    STAIN_VECTORS,
    beer_lambert,
    smooth_field,
)
from predictions.imaging.tissue import tissue_mask  # noqa: E402
from predictions.pipelines.base import BasePipeline  # noqa: E402
from predictions.pipelines.nuclei_density import NucleiDensity  # noqa: E402

NAME = "tissue-classifier-demo"
VERSION = "2"
CLASS_NAMES = ["background", "stroma", "cellular"]
TARGET_MPP = 2.0
TILE = 64  # px at TARGET_MPP
STRIDE = 16  # px at TARGET_MPP on the slide; overlapping tiles give the tiny net enough examples
HOLDOUT_EVERY = 5  # every 5th horizontal band of TILE rows of the slide is held out
MIN_TISSUE_FRACTION = 0.5
# Nuclei cover a few per cent of connective-tissue stroma (scattered fibroblasts: 0.04-0.10 on
# this slide's dermis) but a fifth to a half of epithelium, lymphoid infiltrates and carcinoma
# (0.19-0.39 on this slide's epidermis), so 0.15 falls between the two ranges on any slide.
CELLULAR_NUCLEAR_FRACTION = 0.15
SEED = 0

# Synthetic slides: SYNTH_GRID x SYNTH_GRID cells of one tile each (256 px at 0.5 µm/px), every
# slide with its own eosin and hematoxylin vectors and glass colour. Tiles are cut at a stride of
# half a cell, so most of them straddle two to four cells. The last SYNTH_HOLDOUT slides are held
# out whole.
SYNTH_MPP = 0.5
SYNTH_CELL = 256
SYNTH_GRID = 5
SYNTH_SLIDES = 8
SYNTH_HOLDOUT = 2
SYNTH_STRIDE = 32  # px at TARGET_MPP
SYNTH_WHITES = [DEFAULT_WHITE, (250, 248, 250), (238, 236, 242)]
# The content of the cells of each synthetic slide (shuffled per slide). The label of every tile
# comes from the rule, never from this list.
SYNTH_KINDS = (
    ["glass"] * 2 + ["eosin_only"] * 3 + ["flat_hematoxylin"] * 3 + ["flat_hematoxylin_eosin"] * 4
    + ["sparse_nuclei"] * 3 + ["medium_nuclei"] * 4 + ["dense_nuclei"] * 4 + ["partial"] * 2
)
NUCLEAR_FRACTION_BY_KIND = {"sparse_nuclei": (0.01, 0.07), "medium_nuclei": (0.08, 0.24),
                            "dense_nuclei": (0.30, 0.45), "partial": (0.0, 0.40)}

# Nuclei are segmented in blocks of this many level-0 px (plus the settings' margin), so that the
# work spreads over processes; blocks without tissue are skipped.
BLOCK = 512


# -- images -----------------------------------------------------------------------------------
def read_slide(slide_path: Path) -> tuple[np.ndarray, float]:
    """Level-0 RGB of the whole slide (fine for the small demo slide, not for a real WSI)."""
    import openslide

    slide = openslide.OpenSlide(str(slide_path))
    mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
    width, height = slide.dimensions
    rgba = np.asarray(slide.read_region((0, 0), 0, (width, height)))
    slide.close()
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb, mpp


def downsample(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Area-averaged copy (each factor x factor block averaged); rgb's sides are multiples of factor."""
    rows, cols = rgb.shape[0] // factor, rgb.shape[1] // factor
    blocks = rgb.astype(np.float32).reshape(rows, factor, cols, factor, 3).mean(axis=(1, 3))
    return np.rint(blocks).astype(np.uint8)


# -- the rule ---------------------------------------------------------------------------------
@dataclass
class Labelled:
    """One slide (real or synthetic) at TARGET_MPP, its tile origins and the rule's labels."""

    name: str
    small: np.ndarray                # RGB at about TARGET_MPP
    origins: np.ndarray              # N x 2 tile origins (row, col) in px of small
    labels: np.ndarray = None        # N, index into CLASS_NAMES
    tissue_fraction: np.ndarray = None
    nuclear_fraction: np.ndarray = None
    kinds: list = field(default_factory=list)   # synthetic: content of the cell a tile is aligned on
    stats: dict = field(default_factory=dict)


def _segment_block(hema: np.ndarray, settings: NucleusSettings, margin: tuple[int, int, int, int]) -> np.ndarray:
    """Nuclear pixels (bool) of a block, without its margins (top, left, bottom, right)."""
    nuclear = segment_nuclei(hema, settings).labels > 0
    top, left, bottom, right = margin
    return nuclear[top : nuclear.shape[0] - bottom, left : nuclear.shape[1] - right]


class RuleJob:
    """The per-slide part of the rule (tissue, stains, thresholds) and its blocks of nuclei."""

    def __init__(self, level0: np.ndarray, mpp: float, factor: int) -> None:
        rows, cols = (level0.shape[0] // factor) * factor, (level0.shape[1] // factor) * factor
        self.level0 = level0[:rows, :cols]
        self.mpp, self.factor = mpp, factor
        self.small = downsample(self.level0, factor)
        # The tissue mask at the model's resolution, with the pipelines' sizes in µm².
        px = (mpp * factor) ** 2
        self.mask_small = tissue_mask(self.small, min_object_px=math.ceil(BasePipeline.MIN_TISSUE_UM2 / px),
                                      min_hole_px=math.ceil(BasePipeline.MIN_HOLE_UM2 / px))
        self.mask0 = np.repeat(np.repeat(self.mask_small, factor, axis=0), factor, axis=1)
        white = estimate_white(self.small, self.mask_small)
        self.stains = estimate_stains(self.level0[self.mask0], white)
        pipeline = NucleiDensity()
        defaults = {p.name: p.default for p in pipeline.params}
        self.settings = pipeline.settings(defaults, mpp, self.stains.hematoxylin_p99)
        matrix = self.stains.own_matrix().astype(np.float32)
        self.hema = concentrations(optical_density(self.level0, self.stains.white), matrix)[..., 0]
        self.nuclear = np.zeros(self.mask0.shape, bool)

    def blocks(self):
        """(slice of the core, arguments of _segment_block) for each block with tissue."""
        reach = self.settings.reach_px
        height, width = self.mask0.shape
        for r in range(0, height, BLOCK):
            for c in range(0, width, BLOCK):
                r1, c1 = min(r + BLOCK, height), min(c + BLOCK, width)
                if not self.mask0[r:r1, c:c1].any():
                    continue
                R0, C0 = max(r - reach, 0), max(c - reach, 0)
                R1, C1 = min(r1 + reach, height), min(c1 + reach, width)
                margin = (r - R0, c - C0, R1 - r1, C1 - c1)
                yield (slice(r, r1), slice(c, c1)), (self.hema[R0:R1, C0:C1], self.settings, margin)

    def label(self, origins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, tissue fractions and nuclear area fractions of the tiles at origins (small px)."""
        nuclear = self.nuclear & self.mask0
        size = TILE * self.factor

        def box_sums(image: np.ndarray) -> np.ndarray:
            total = np.pad(image.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            r, c = origins[:, 0] * self.factor, origins[:, 1] * self.factor
            return total[r + size, c + size] - total[r, c + size] - total[r + size, c] + total[r, c]

        tissue_px = box_sums(self.mask0)
        tissue_fraction = tissue_px / size**2
        nuclear_fraction = box_sums(nuclear) / np.maximum(tissue_px, 1)
        labels = np.where(tissue_fraction < MIN_TISSUE_FRACTION, 0,
                          np.where(nuclear_fraction >= CELLULAR_NUCLEAR_FRACTION, 2, 1))
        return labels.astype(np.int64), tissue_fraction, nuclear_fraction


def finish(labelled: Labelled, job: RuleJob) -> Labelled:
    """The rule's labels for the tiles of a slide whose nuclei are segmented."""
    labelled.labels, labelled.tissue_fraction, labelled.nuclear_fraction = job.label(labelled.origins)
    labelled.stats = {
        "tissue_px": int(job.mask0.sum()),
        "nuclear_px": int((job.nuclear & job.mask0).sum()),
        "hematoxylin_p99": job.stains.hematoxylin_p99,
        "hematoxylin_threshold_od": round(job.settings.hematoxylin_od, 3),
        "local_contrast_od": round(job.settings.local_contrast_od, 3),
        "second_stain": job.stains.second_stain,
        "stain_method": job.stains.method,
    }
    return labelled


def label_synthetic(index: int) -> Labelled:
    """Make synthetic slide `index` and label its tiles by the rule (in one process)."""
    rgb, kinds = synthetic_slide(index)
    job = RuleJob(rgb, SYNTH_MPP, round(TARGET_MPP / SYNTH_MPP))
    for core, args in job.blocks():
        job.nuclear[core] = _segment_block(*args)
    origins, names = synthetic_origins(kinds)
    return finish(Labelled(f"synthetic-{index}", job.small, origins, kinds=names), job)


def label_all(level0: np.ndarray, mpp: float, name: str, workers: int) -> tuple[Labelled, list[Labelled]]:
    """The rule on the slide (tiles at STRIDE) and on the synthetic slides, over `workers` processes.

    The work is split only for speed: the labels are the same for any number of workers.
    """
    factor = max(1, round(TARGET_MPP / mpp))
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _InProcess() as pool:
        synthetic = [pool.submit(label_synthetic, index) for index in range(SYNTH_SLIDES)]
        job = RuleJob(level0, mpp, factor)
        blocks = [(core, pool.submit(_segment_block, *args)) for core, args in job.blocks()]
        for core, future in blocks:
            job.nuclear[core] = future.result()
        rows = np.arange(0, job.small.shape[0] - TILE + 1, STRIDE)
        cols = np.arange(0, job.small.shape[1] - TILE + 1, STRIDE)
        slide = finish(Labelled(name, job.small, np.array([(r, c) for r in rows for c in cols])), job)
        return slide, [future.result() for future in synthetic]


class _InProcess:
    """ProcessPoolExecutor's submit / result, run at once in this process (--workers 1)."""

    class _Done:
        def __init__(self, value) -> None:
            self.value = value

        def result(self):
            return self.value

    def __enter__(self) -> "_InProcess":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args):
        return self._Done(fn(*args))


# -- synthetic slides -------------------------------------------------------------------------
def _nuclei_concentration(shape: tuple[int, int], allowed: np.ndarray, fraction: float, dense: bool,
                          rng: np.random.Generator) -> np.ndarray:
    """Hematoxylin concentration of ellipses covering about `fraction` of `allowed` (HxW bool).

    Sizes: 20-45 µm² (lymphocyte-like) when dense, else 25-90 µm²; concentration 0.5-1.1 OD with
    chromatin texture; random sequential placement with a clearance of 0.5 µm (dense) or 2 µm.
    """
    h, w = shape
    out = np.zeros(shape, np.float32)
    target = fraction * allowed.sum()
    if target <= 0:
        return out
    clearance = (0.5 if dense else 2.0) / SYNTH_MPP
    texture = smooth_field(shape, 3.0, rng) * 2 - 1
    placed = np.zeros((0, 3))   # x, y, bounding radius of the nuclei so far
    covered, misses = 0.0, 0
    while covered < target and misses < 200:
        area_um2 = rng.uniform(20, 45) if dense else rng.uniform(25, 90)
        aspect = rng.uniform(1.0, 1.3) if dense else rng.uniform(1.0, 1.6)
        a = math.sqrt(area_um2 * aspect / math.pi) / SYNTH_MPP
        b = math.sqrt(area_um2 / (aspect * math.pi)) / SYNTH_MPP
        x, y = rng.uniform(a + 2, w - a - 2), rng.uniform(a + 2, h - a - 2)
        window = allowed[int(y - a - 1) : int(y + a + 2), int(x - a - 1) : int(x + a + 2)]
        if not window.all() or (np.hypot(placed[:, 0] - x, placed[:, 1] - y) < a + placed[:, 2] + clearance).any():
            misses += 1
            continue
        misses = 0
        placed = np.vstack([placed, (x, y, a)])
        theta, conc = rng.uniform(0, math.pi), rng.uniform(0.5, 1.1)
        x0, x1, y0, y1 = int(x - a - 2), int(x + a + 3), int(y - a - 2), int(y + a + 3)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        u = (xx - x) * math.cos(theta) + (yy - y) * math.sin(theta)
        v = -(xx - x) * math.sin(theta) + (yy - y) * math.cos(theta)
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / rho
        grad = np.where(rho < 1e-9, 1.0 / a, grad)
        coverage = np.clip(0.5 - (rho - 1.0) / grad, 0.0, 1.0)
        value = (conc * coverage * (1 + 0.15 * texture[y0:y1, x0:x1])).astype(np.float32)
        np.maximum(out[y0:y1, x0:x1], value, out=out[y0:y1, x0:x1])
        covered += math.pi * a * b
    return out


def synthetic_slide(index: int) -> tuple[np.ndarray, list[str]]:
    """An H&E mosaic of SYNTH_GRID² cells (RGB at SYNTH_MPP) and the content of each cell."""
    rng = np.random.default_rng([SEED, index])
    side = SYNTH_GRID * SYNTH_CELL
    shape = (side, side)
    kinds = [SYNTH_KINDS[i] for i in rng.permutation(len(SYNTH_KINDS))]
    strength = rng.uniform(0.6, 1.4)
    eosin_field = (0.15 + 0.225 * smooth_field(shape, 160, rng) + 0.075 * smooth_field(shape, 24, rng)) * strength
    hema_background = 0.05 * smooth_field(shape, 120, rng)
    eosin = np.zeros(shape, np.float32)
    hema = np.zeros(shape, np.float32)
    cell_shape = (SYNTH_CELL, SYNTH_CELL)
    for k, kind in enumerate(kinds):
        rows = slice((k // SYNTH_GRID) * SYNTH_CELL, (k // SYNTH_GRID + 1) * SYNTH_CELL)
        cols = slice((k % SYNTH_GRID) * SYNTH_CELL, (k % SYNTH_GRID + 1) * SYNTH_CELL)
        if kind == "glass":
            continue
        if kind == "eosin_only":
            eosin[rows, cols] = eosin_field[rows, cols]
        elif kind.startswith("flat_hematoxylin"):
            # Flat hematoxylin (purple), +-5 % over 60 µm: tinted tissue without any nucleus.
            level = rng.uniform(0.1, 1.0)
            hema[rows, cols] = level * (0.95 + 0.1 * smooth_field(cell_shape, 120, rng))
            if kind.endswith("eosin"):
                eosin[rows, cols] = eosin_field[rows, cols]
        else:
            allowed = np.ones(cell_shape, bool)
            if kind == "partial":
                # Tissue on one side of a straight edge through the cell, glass on the other.
                angle, offset = rng.uniform(0, 2 * math.pi), rng.uniform(-0.35, 0.35) * SYNTH_CELL
                yy, xx = np.mgrid[0:SYNTH_CELL, 0:SYNTH_CELL] - (SYNTH_CELL - 1) / 2
                allowed = xx * math.cos(angle) + yy * math.sin(angle) < offset
            low, high = NUCLEAR_FRACTION_BY_KIND[kind]
            nuclei = _nuclei_concentration(cell_shape, allowed, rng.uniform(low, high), kind == "dense_nuclei", rng)
            eosin[rows, cols] = np.where(allowed, eosin_field[rows, cols], 0)
            hema[rows, cols] = np.where(allowed, hema_background[rows, cols], 0) + nuclei
    vectors = {"eosin": EOSIN_VARIANTS[index % len(EOSIN_VARIANTS)],
               "hematoxylin": STAIN_VECTORS["hematoxylin_variant" if index % 2 else "hematoxylin"]}
    rgb = beer_lambert({"eosin": eosin, "hematoxylin": hema}, vectors,
                       white=SYNTH_WHITES[index % len(SYNTH_WHITES)], rng=rng)
    return rgb, kinds


def synthetic_origins(kinds: list[str]) -> tuple[np.ndarray, list[str]]:
    """Tile origins (px at TARGET_MPP) at SYNTH_STRIDE, and the kind of the cell each is aligned on."""
    cell = SYNTH_CELL * SYNTH_MPP // TARGET_MPP  # 64
    side = int(SYNTH_GRID * cell)
    steps = np.arange(0, side - TILE + 1, SYNTH_STRIDE)
    origins = np.array([(r, c) for r in steps for c in steps])
    names = [kinds[int(r // cell) * SYNTH_GRID + int(c // cell)] if r % cell == 0 and c % cell == 0 else "straddling"
             for r, c in origins]
    return origins, names


def check_tiles() -> dict[str, np.ndarray]:
    """Fresh synthetic tiles (at TARGET_MPP) for the two checks, not used in training.

    flat_purple: hematoxylin tint without any nucleus, 0.1-1.0 OD (+-5 %), both hematoxylin
    vectors, without eosin and with each eosin variant; dense_nuclei: nuclei drawn to cover 35 %
    of the tile (the rule measures 0.29-0.36 on such tiles), over eosin.
    """
    rng = np.random.default_rng([SEED, 1000])
    shape = (SYNTH_CELL, SYNTH_CELL)
    factor = round(TARGET_MPP / SYNTH_MPP)
    flat, dense = [], []
    for h_vector in ("hematoxylin", "hematoxylin_variant"):
        for e in range(len(EOSIN_VARIANTS) + 1):
            vectors = {"hematoxylin": STAIN_VECTORS[h_vector], "eosin": EOSIN_VARIANTS[max(e - 1, 0)]}
            eosin = (0.15 + 0.3 * smooth_field(shape, 160, rng)) * (e > 0)
            for level in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0):
                hema = level * (0.95 + 0.1 * smooth_field(shape, 120, rng))
                flat.append(beer_lambert({"hematoxylin": hema, "eosin": eosin}, vectors, rng=rng))
            if e > 0:
                for _ in range(2):
                    nuclei = _nuclei_concentration(shape, np.ones(shape, bool), 0.35, True, rng)
                    hema = 0.05 * smooth_field(shape, 120, rng) + nuclei
                    dense.append(beer_lambert({"hematoxylin": hema, "eosin": eosin}, vectors, rng=rng))
    return {"flat_purple": np.stack([downsample(t, factor) for t in flat]),
            "dense_nuclei": np.stack([downsample(t, factor) for t in dense])}


# -- the model --------------------------------------------------------------------------------
class TinyTissueNet(nn.Module):
    """Four 3x3 conv blocks, then global average pooling: 28 k parameters, 155 KB saved."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(3, 16), nn.MaxPool2d(2),
            block(16, 32), nn.MaxPool2d(2),
            block(32, 32), nn.MaxPool2d(2),
            block(32, 48),
            nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Linear(48, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations per tile: tissue has no preferred orientation."""
    turns = torch.randint(4, (batch.shape[0],), generator=generator)
    flips = torch.rand(batch.shape[0], generator=generator) < 0.5
    out = batch.clone()
    for k in range(4):
        for flip in (False, True):
            sel = (turns == k) & (flips == flip)
            if sel.any():
                tiles = torch.rot90(batch[sel], k, dims=(2, 3))
                out[sel] = torch.flip(tiles, dims=(3,)) if flip else tiles
    return out


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(x).argmax(1)


def confusion(y: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """Rows: rule label, columns: model prediction."""
    n = len(CLASS_NAMES)
    return torch.bincount(y * n + predicted, minlength=n * n).reshape(n, n).numpy()


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int = 64) -> TinyTissueNet:
    generator = torch.Generator().manual_seed(SEED)
    model = TinyTissueNet(len(CLASS_NAMES))
    # Background outnumbers tissue tiles on the slide; weight classes so each counts equally.
    counts = torch.bincount(y, minlength=len(CLASS_NAMES)).float()
    weights = counts.sum() / (len(CLASS_NAMES) * counts.clamp(min=1))
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=3e-3, total_steps=epochs * math.ceil(len(x) / batch_size)
    )
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(augment(x[idx], generator)), y[idx])
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:2d}/{epochs}  loss {total / len(x):.4f}", flush=True)
    return model


def tiles_of(labelled: Labelled) -> np.ndarray:
    return np.stack([labelled.small[r : r + TILE, c : c + TILE] for r, c in labelled.origins])


def per_class(labels: np.ndarray) -> dict[str, int]:
    return {name: int((labels == k).sum()) for k, name in enumerate(CLASS_NAMES)}


def agreement(cm: np.ndarray, where: str = "") -> str:
    """'0.952 (59 / 62 tiles<where>)': the share of tiles on which model and rule agree."""
    return f"{np.trace(cm) / cm.sum():.3f} ({int(np.trace(cm))} / {int(cm.sum())} tiles{where})"


# -- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes for nucleus segmentation (the labels do not depend on it)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    # The slide: tiles at a stride of 16 px, bands of 64 px rows held out; synthetic slides.
    level0, mpp = read_slide(args.slide)
    factor = max(1, round(TARGET_MPP / mpp))
    slide, synthetic = label_all(level0, mpp, args.slide.name, args.workers)
    labelled_at = time.monotonic() - started
    print(f"rule applied to 1 slide and {SYNTH_SLIDES} synthetic slides in {labelled_at:.0f} s", flush=True)

    # Overlapping tiles would leak pixels between a random train/holdout split, so whole bands
    # of the slide are held out and training tiles that touch a held-out band are dropped;
    # synthetic slides are held out whole.
    band = slide.origins[:, 0] // TILE
    band_end = (slide.origins[:, 0] + TILE - 1) // TILE
    in_held_band = band % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    slide_held = in_held_band & (band == band_end)
    slide_train = ~(in_held_band | (band_end % HOLDOUT_EVERY == HOLDOUT_EVERY - 1))
    synth_train = synthetic[: SYNTH_SLIDES - SYNTH_HOLDOUT]
    synth_held = synthetic[SYNTH_SLIDES - SYNTH_HOLDOUT :]

    def stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        tiles = np.concatenate([t for t, _ in parts])
        labels = np.concatenate([y for _, y in parts])
        return torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(labels)

    slide_tiles = tiles_of(slide)
    train_x, train_y = stack([(slide_tiles[slide_train], slide.labels[slide_train])]
                             + [(tiles_of(s), s.labels) for s in synth_train])
    slide_x, slide_y = stack([(slide_tiles[slide_held], slide.labels[slide_held])])
    synth_x, synth_y = stack([(tiles_of(s), s.labels) for s in synth_held])
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3))

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    model = train(normalise(train_x), train_y, args.epochs)
    train_cm = confusion(train_y, predict(model, normalise(train_x)))
    slide_cm = confusion(slide_y, predict(model, normalise(slide_x)))
    synth_predicted = predict(model, normalise(synth_x))
    synth_cm = confusion(synth_y, synth_predicted)

    # The checks: on the held-out synthetic slides, flat hematoxylin-tinted (purple) tissue without
    # nuclei must not come out "cellular", and densely nucleated tissue must.
    held_kinds = [k for s in synth_held for k in s.kinds]
    held_fractions = np.concatenate([s.nuclear_fraction for s in synth_held])
    checks = {}
    for kind in ("glass", "eosin_only", "flat_hematoxylin", "flat_hematoxylin_eosin", "sparse_nuclei",
                 "medium_nuclei", "dense_nuclei"):
        sel = np.array([k == kind for k in held_kinds])
        checks[kind] = {
            "tiles": int(sel.sum()),
            "rule": per_class(synth_y.numpy()[sel]),
            "model": per_class(synth_predicted.numpy()[sel]),
            "nuclear_fraction": [round(float(v), 3) for v in np.sort(held_fractions[sel])],
        }
    cellular = CLASS_NAMES.index("cellular")
    flat = np.array([k.startswith("flat_hematoxylin") for k in held_kinds])
    dense = np.array([k == "dense_nuclei" for k in held_kinds])
    fresh = {name: predict(model, normalise(stack([(t, np.zeros(len(t), np.int64))])[0])).numpy()
             for name, t in check_tiles().items()}
    flat_ok = bool(flat.any() and (synth_predicted.numpy()[flat] != cellular).all()
                   and (fresh["flat_purple"] != cellular).all())
    dense_ok = bool(dense.any() and (synth_predicted.numpy()[dense] == cellular).all()
                    and (fresh["dense_nuclei"] == cellular).all())

    # Export.
    args.out.mkdir(parents=True, exist_ok=True)
    pt_path = args.out / "tissue_classifier_demo.pt"
    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit deprecated; the model registry still stores TorchScript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model.eval()), str(pt_path))
    n_synth_train = sum(len(s.labels) for s in synth_train)
    cut = f"{CELLULAR_NUCLEAR_FRACTION:.0%}".replace("%", " %")
    manifest = {
        "name": NAME,
        "version": VERSION,
        "file": pt_path.name,
        "tile_size": TILE,
        "mpp": TARGET_MPP,
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "class_names": CLASS_NAMES,
        "description": (
            "Demonstration of the model path — not histology, not for diagnosis. A tiny CNN (28 k "
            "parameters) that imitates a fixed rule built on the classical image analysis of "
            "predictions/imaging/ (tissue mask; nuclei segmented on hematoxylin optical density with "
            "the slide's own stain vectors), so that Histo-IA's model-inference path has a real model "
            "to run. See predictions/demo_model/README.md."),
        "trained_on": (
            f"one H&E slide (cmu-1-small-region.svs) plus {n_synth_train} synthetic tiles from "
            f"predictions/imaging/synthetic.py: {int(slide_train.sum())} overlapping 64 x 64 px tiles at "
            "2 µm/px of the slide (Aperio, H&E, skin; OpenSlide test data) and the tiles of "
            f"{SYNTH_SLIDES - SYNTH_HOLDOUT} synthetic H&E slides rendered with its Beer-Lambert model "
            "and stain vectors (glass, eosin only, flat hematoxylin tint without nuclei, sparse to "
            "dense nuclei). Labels were not made by a pathologist: every tile, real or synthetic, was "
            "labelled by the same fixed rule, which the model was trained to imitate."),
        "label_meanings": {
            "background": "mostly glass (tissue covers less than half of the tile, by the rule's tissue mask)",
            "stroma": (f"tissue with few nuclei per area: segmented nuclei cover less than {cut} of the "
                       "tile's tissue (a fixed cut, the same on every slide); includes tissue without "
                       "nuclei, however stained"),
            "cellular": (f"tissue with many nuclei per area: segmented nuclei cover at least {cut} of "
                         "the tile's tissue (a fixed cut, the same on every slide)"),
        },
        "stain_normalisation": "none (expects H&E as scanned)",
        "validation": (
            "Agreement with the rule-based labeller on held-out tiles of the same slide: "
            f"{agreement(slide_cm, ' in held-out bands')}; on held-out synthetic tiles: "
            f"{agreement(synth_cm, f' of {SYNTH_HOLDOUT} synthetic slides not used in training')}. "
            "No histological validation."),
        "not_for_diagnosis": True,
        "sha256": hashlib.sha256(pt_path.read_bytes()).hexdigest(),
    }
    (args.out / "model.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

    print(f"slide {args.slide.name}: {mpp} um/px, downsample {factor}, {slide.stats}")
    for s in synthetic:
        print(f"{s.name}: {per_class(s.labels)}, {s.stats}")
    print(f"train: {len(train_y)} tiles, {per_class(train_y.numpy())} "
          f"(slide {per_class(slide.labels[slide_train])}, synthetic {n_synth_train})")
    print(f"holdout slide: {per_class(slide_y.numpy())}; holdout synthetic: {per_class(synth_y.numpy())}")
    for name, cm in (("train", train_cm), ("holdout slide", slide_cm), ("holdout synthetic", synth_cm)):
        print(f"{name} agreement {agreement(cm)}; confusion (rows rule, cols model):")
        print(cm)
    for kind, result in checks.items():
        print(f"held-out synthetic {kind}: {result}")
    for name, predicted in fresh.items():
        print(f"fresh check tiles {name}: model {per_class(predicted)}")
    print(f"check: flat hematoxylin tint without nuclei never 'cellular' (held-out and fresh tiles): "
          f"{'PASS' if flat_ok else 'FAIL'}")
    print(f"check: dense nuclei always 'cellular' (held-out and fresh tiles): {'PASS' if dense_ok else 'FAIL'}")
    print(f"wrote {pt_path} ({pt_path.stat().st_size} bytes), sha256 {manifest['sha256']}, "
          f"in {time.monotonic() - started:.0f} s")
    return 0 if flat_ok and dense_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
