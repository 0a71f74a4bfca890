"""Generate a large benchmark slide: a tiled, pyramidal, JPEG-compressed TIFF OpenSlide reads.

Real tissue, not noise: the shared CMU slide (H&E, 0.499 µm/px) is cropped to 2048 x 2816 px,
mirrored into a seamless 4096 x 5632 px tile, and that tile repeats over the whole image. Each
pyramid level is the mirrored source downsampled by 2^k (box mean) and repeated the same way,
so the levels agree pixel for pixel at every scale. Tiles are 256 x 256 JPEG (quality 80, stored
as RGB, Photometric RGB, Compression 7), levels are successive IFDs, 2x apart: OpenSlide's
"generic-tiff" format, written as BigTIFF. generic-tiff carries no pixel size; the benchmark
does not need one.

    .venv/bin/python bench/make_large_slide.py --size 40000 --out /tmp/histoia-bench/large-40000.tiff

tifffile writes the pre-compressed JPEG tiles as they are (no imagecodecs needed): it is told
"no compression" and the Compression tag is set to JPEG afterwards, in place.
Never written into the repository: the default is under the system's temporary folder.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CMU_SLIDE = REPO.parent / "shared" / "data" / "slides" / "cmu-1-small-region.svs"
TILE = 256
QUALITY = 80
CROP = (2048, 2816)      # width, height: 2 x crop is divisible by 2^9, so every level repeats exactly
MIN_LEVEL_SIDE = 512


def default_path(size: int) -> Path:
    return Path(tempfile.gettempdir()) / "histoia-bench" / f"large-{size}.tiff"


def source_tile(cmu: Path = CMU_SLIDE) -> np.ndarray:
    """The seamless repeating unit: the CMU crop mirrored right and down (RGB uint8)."""
    import openslide

    with openslide.OpenSlide(str(cmu)) as slide:
        region = np.asarray(slide.read_region((0, 0), 0, CROP).convert("RGB"))
    top = np.concatenate([region, region[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


def downsample(array: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return array
    h, w, c = array.shape
    return array.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3)).round().astype(np.uint8)


def level_tiles(unit: np.ndarray, width: int, height: int):
    """JPEG bytes of each 256 x 256 tile of a width x height level, row by row (white past the edge)."""
    uh, uw = unit.shape[:2]
    for y in range(0, height, TILE):
        rows = np.arange(y, y + TILE) % uh
        for x in range(0, width, TILE):
            cols = np.arange(x, x + TILE) % uw
            tile = unit[rows[:, None], cols[None, :]]
            if x + TILE > width or y + TILE > height:
                tile = tile.copy()
                tile[max(0, height - y):, :] = 255
                tile[:, max(0, width - x):] = 255
            out = io.BytesIO()
            Image.fromarray(tile).save(out, format="JPEG", quality=QUALITY, keep_rgb=True)
            yield out.getvalue()


def write(path: Path, size: int, cmu: Path = CMU_SLIDE, log=print) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    unit = source_tile(cmu)
    started = time.monotonic()
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        level, width, height = 0, size, size
        while True:
            factor = 2 ** level
            tw.write(level_tiles(downsample(unit, factor), width, height), shape=(height, width, 3),
                     dtype=np.uint8, tile=(TILE, TILE), photometric="rgb", planarconfig="contig",
                     subfiletype=0 if level == 0 else 1, metadata=None,
                     description="Histo-IA benchmark slide (tiled CMU-1 tissue)" if level == 0 else None)
            log(f"  level {level}: {width} x {height} ({time.monotonic() - started:.0f} s)")
            if max(width, height) <= MIN_LEVEL_SIDE:
                break
            level, width, height = level + 1, (width + 1) // 2, (height + 1) // 2
    with tifffile.TiffFile(tmp) as tf:
        offsets = [page.tags["Compression"].valueoffset for page in tf.pages]
        byteorder = tf.byteorder
    with open(tmp, "r+b") as fh:
        for offset in offsets:
            fh.seek(offset)
            fh.write(struct.pack(byteorder + "H", 7))   # Compression: JPEG
    os.replace(tmp, path)
    return path


def ensure(size: int, path: Path | None = None, log=print) -> Path:
    """The benchmark slide of this size, generated once and reused."""
    import openslide

    path = path or default_path(size)
    if path.exists():
        try:
            with openslide.OpenSlide(str(path)) as slide:
                if slide.dimensions == (size, size):
                    return path
        except openslide.OpenSlideError:
            pass
    log(f"generating {path} ({size} x {size} px)...")
    return write(path, size, log=log)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40_000, help="width = height in pixels (default 40000)")
    parser.add_argument("--out", type=Path, help="output file (default: <tmp>/histoia-bench/large-<size>.tiff)")
    args = parser.parse_args(argv)
    out = args.out or default_path(args.size)
    if REPO in out.resolve().parents:
        parser.error("write the slide outside the repository")
    path = write(out, args.size)
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        print(f"{path}: {openslide.OpenSlide.detect_format(str(path))}, {slide.dimensions[0]} x {slide.dimensions[1]}, "
              f"{slide.level_count} levels, {path.stat().st_size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
