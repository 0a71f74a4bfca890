"""Hostile and broken files for the bad-input tests, made on the fly (nothing stored in the repo)."""

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import CMU_SLIDE


def png_named_tiff(folder: Path) -> Path:
    path = folder / "scan-04.tiff"
    Image.fromarray(np.full((64, 64, 3), 180, np.uint8)).save(path, format="PNG")
    return path


def truncated_slide(folder: Path) -> Path:
    data = CMU_SLIDE.read_bytes()
    path = folder / "cut-short.svs"
    path.write_bytes(data[: len(data) // 2])
    return path


def huge_declared_tiff(folder: Path, width=1_000_000, height=1_000_000) -> Path:
    """A 300-byte TIFF whose header declares width x height pixels: nothing behind it."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 200),
               (277, 3, 1), (278, 4, height), (279, 4, 16)]
    path = folder / "declares-1e12-pixels.tiff"
    with open(path, "wb") as fh:
        fh.write(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
        for tag, kind, value in entries:
            fh.write(struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1, value))
        fh.write(struct.pack("<I", 0) + b"\0" * 256)
    return path


def blank_slide(folder: Path) -> Path:
    """An empty glass slide: no tissue at all (a little scanner noise, no colour)."""
    rng = np.random.default_rng(0)
    path = folder / "blank-glass.png"
    Image.fromarray((245 + rng.integers(0, 6, (1500, 1200, 1))).repeat(3, axis=2).astype(np.uint8)).save(path)
    return path
