"""Train the demo tissue classifier on one slide, with labels from the classical image analysis.

    python predictions/demo_model/train.py --slide PATH --out predictions/demo_model/

Writes tissue_classifier_demo.pt (TorchScript) and model.json into --out. The model imitates a
rule-based labeller on a single slide so that the GPU inference path has a real model to run; it
is not a diagnostic model. README.md beside this file explains the labels and the results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import openslide
import torch
from torch import nn

if __package__ in (None, ""):
    # Run as a script: make the repository root importable for predictions.imaging.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from predictions.imaging.nuclei import detect_nuclei  # noqa: E402
from predictions.imaging.tissue import tissue_mask  # noqa: E402

CLASS_NAMES = ["background", "stroma", "cellular"]
TARGET_MPP = 2.0
TILE = 64  # px at TARGET_MPP
STRIDE = 16  # px at TARGET_MPP; overlapping tiles give the tiny net enough examples
HOLDOUT_EVERY = 5  # every 5th horizontal band of TILE rows is held out
MIN_TISSUE_FRACTION = 0.5
SEED = 0


def read_downsampled(slide_path: Path) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Level-0 RGB, its area-averaged copy at about TARGET_MPP, the factor and the level-0 mpp.

    Reads the whole level 0 at once: fine for the small demo slide, not for a real WSI.
    """
    slide = openslide.OpenSlide(str(slide_path))
    mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
    factor = max(1, round(TARGET_MPP / mpp))
    width, height = slide.dimensions
    rgba = np.asarray(slide.read_region((0, 0), 0, (width, height)))
    slide.close()
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    rows, cols = (height // factor) * factor, (width // factor) * factor
    cropped = rgb[:rows, :cols].astype(np.float32)
    small = cropped.reshape(rows // factor, factor, cols // factor, factor, 3).mean(axis=(1, 3))
    return rgb, np.rint(small).astype(np.uint8), factor, mpp


def rule_labels(
    level0: np.ndarray, origins: np.ndarray, factor: int, mpp: float
) -> tuple[np.ndarray, dict]:
    """Label each tile (origin in downsampled px) background / stroma / cellular.

    background: tissue fraction < 0.5 (tissue_mask of the whole slide at level 0);
    cellular: nuclei per tissue pixel above the median over the non-background tiles;
    stroma: the other non-background tiles.
    """
    mask = tissue_mask(level0)
    centroids = detect_nuclei(level0, tissue=mask)
    size = TILE * factor
    tissue_fraction = np.empty(len(origins))
    density = np.zeros(len(origins))
    for k, (r, c) in enumerate(origins * factor):
        tissue_px = mask[r : r + size, c : c + size].sum()
        tissue_fraction[k] = tissue_px / size**2
        inside = (
            (centroids[:, 0] >= r)
            & (centroids[:, 0] < r + size)
            & (centroids[:, 1] >= c)
            & (centroids[:, 1] < c + size)
        )
        density[k] = inside.sum() / max(tissue_px, 1)
    is_tissue = tissue_fraction >= MIN_TISSUE_FRACTION
    median_density = float(np.median(density[is_tissue]))
    labels = np.where(is_tissue, np.where(density > median_density, 2, 1), 0)
    stats = {
        "nuclei_on_slide": len(centroids),
        "median_nuclei_per_mm2_tissue": round(median_density * 1e6 / mpp**2),
    }
    return labels.astype(np.int64), stats


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
    out = batch.clone()
    for i in range(out.shape[0]):
        k = int(torch.randint(4, (1,), generator=generator))
        tile = torch.rot90(out[i], k, dims=(1, 2))
        if torch.rand(1, generator=generator) < 0.5:
            tile = torch.flip(tile, dims=(2,))
        out[i] = tile
    return out


def confusion(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Rows: rule label, columns: model prediction."""
    model.eval()
    with torch.inference_mode():
        predicted = model(x).argmax(1)
    n = len(CLASS_NAMES)
    return torch.bincount(y * n + predicted, minlength=n * n).reshape(n, n).numpy()


def train(
    x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int = 64
) -> TinyTissueNet:
    generator = torch.Generator().manual_seed(SEED)
    model = TinyTissueNet(len(CLASS_NAMES))
    # Background outnumbers tissue tiles on this slide; weight classes so each counts equally.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args(argv)

    started = time.monotonic()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    level0, small, factor, mpp = read_downsampled(args.slide)
    rows = np.arange(0, small.shape[0] - TILE + 1, STRIDE)
    cols = np.arange(0, small.shape[1] - TILE + 1, STRIDE)
    origins = np.array([(r, c) for r in rows for c in cols])
    labels, stats = rule_labels(level0, origins, factor, mpp)

    # Overlapping tiles would leak pixels between a random train/holdout split, so whole bands
    # are held out and training tiles that touch a held-out band are dropped.
    band = origins[:, 0] // TILE
    band_end = (origins[:, 0] + TILE - 1) // TILE
    held = (band % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) & (band == band_end)
    touches = (band % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) | (
        band_end % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    )
    train_sel = ~touches

    tiles = np.stack([small[r : r + TILE, c : c + TILE] for r, c in origins])
    as_float = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    mean = as_float[torch.from_numpy(train_sel)].mean(dim=(0, 2, 3))
    std = as_float[torch.from_numpy(train_sel)].std(dim=(0, 2, 3))
    x = (as_float - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    y = torch.from_numpy(labels)

    x_train, y_train = x[torch.from_numpy(train_sel)], y[torch.from_numpy(train_sel)]
    x_hold, y_hold = x[torch.from_numpy(held)], y[torch.from_numpy(held)]
    model = train(x_train, y_train, args.epochs)
    train_cm, hold_cm = confusion(model, x_train, y_train), confusion(model, x_hold, y_hold)

    args.out.mkdir(parents=True, exist_ok=True)
    pt_path = args.out / "tissue_classifier_demo.pt"
    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit deprecated; the model registry still stores TorchScript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model.eval()), str(pt_path))
    manifest = {
        "name": "tissue-classifier-demo",
        "version": "1",
        "file": pt_path.name,
        "tile_size": TILE,
        "mpp": TARGET_MPP,
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "class_names": CLASS_NAMES,
        "sha256": hashlib.sha256(pt_path.read_bytes()).hexdigest(),
    }
    (args.out / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")

    def per_class(sel: np.ndarray) -> str:
        return ", ".join(
            f"{name} {int((labels[sel] == k).sum())}" for k, name in enumerate(CLASS_NAMES)
        )

    print(f"slide {args.slide.name}: {mpp} um/px, downsample {factor}, {stats}")
    print(f"tiles: {len(origins)}; train {int(train_sel.sum())} ({per_class(train_sel)}); "
          f"holdout {int(held.sum())} ({per_class(held)})")
    for name, cm in (("train", train_cm), ("holdout", hold_cm)):
        print(f"{name} accuracy {np.trace(cm) / cm.sum():.3f}; confusion (rows rule, cols model):")
        print(cm)
    print(f"wrote {pt_path} ({pt_path.stat().st_size} bytes) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
