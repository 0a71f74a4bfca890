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


def _tissue_tile(side=256) -> np.ndarray:
    """A pink-and-purple texture, so a tile looks like stained tissue rather than glass."""
    y, x = np.mgrid[0:side, 0:side]
    wave = (np.sin(x / 9.0) * np.cos(y / 7.0) + 1) / 2
    rgb = np.stack([200 - 60 * wave, 120 - 50 * wave, 190 - 20 * wave], axis=-1)
    return rgb.astype(np.uint8)


def single_level_tiled_tiff(folder: Path, side: int, name: str | None = None, cut_after: int | None = None) -> Path:
    """A generic tiled TIFF with one level of side x side px and no pyramid, a few hundred KB.

    Every tile entry points at the same deflate-compressed 256 x 256 tile, so the file stays
    small whatever it declares (the way a hostile file is made). With cut_after=N, the tiles
    from the Nth on point past the end of the file, as in a truncated copy.
    """
    import zlib

    tile = zlib.compress(_tissue_tile().tobytes(), 9)
    count = (-(-side // 256)) ** 2
    path = folder / (name or f"single-level-{side}.tif")
    entries_at = 8
    n_entries = 11
    bps_at = entries_at + 2 + 12 * n_entries + 4
    offsets_at = bps_at + 6
    counts_at = offsets_at + 4 * count
    tile_at = counts_at + 4 * count
    offsets = [tile_at if cut_after is None or i < cut_after else tile_at + 10**8 for i in range(count)]
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 3, bps_at), (259, 3, 1, 8), (262, 3, 1, 2),
               (277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, 256), (323, 3, 1, 256),
               (324, 4, count, offsets_at), (325, 4, count, counts_at)]
    with open(path, "wb") as fh:
        fh.write(b"II*\x00" + struct.pack("<I", entries_at) + struct.pack("<H", len(entries)))
        for tag, kind, n, value in entries:
            if kind == 3 and n == 1:
                fh.write(struct.pack("<HHIHH", tag, kind, n, value, 0))
            else:
                fh.write(struct.pack("<HHII", tag, kind, n, value))
        fh.write(struct.pack("<I", 0))
        fh.write(struct.pack("<HHH", 8, 8, 8))
        fh.write(struct.pack(f"<{count}I", *offsets))
        fh.write(struct.pack(f"<{count}I", *([len(tile)] * count)))
        fh.write(tile)
    return path


def large_plain_image(folder: Path, side: int, fmt: str = "png") -> Path:
    """A side x side PNG or JPEG of flat tissue colour: a few hundred KB, side² px to decode.

    Written by libvips, which streams it: the test process never holds it decoded either.
    """
    import pyvips

    image = (pyvips.Image.black(side, side, bands=3) + [205, 140, 190]).cast("uchar")
    path = folder / f"plain-{side}.{'jpg' if fmt == 'jpeg' else fmt}"
    if fmt == "png":
        image.pngsave(str(path), compression=9)
    else:
        image.jpegsave(str(path), Q=75)
    return path


def huge_declared_png(folder: Path, side: int = 100_000) -> Path:
    """A PNG whose header declares side x side px, followed by almost no image data."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = folder / f"declares-{side}.png"
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return path
