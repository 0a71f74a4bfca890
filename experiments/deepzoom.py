"""Deep Zoom tiles of a slide for the viewer: OpenSlide's DeepZoomGenerator, JPEG bytes, a disk cache.

Plain Python, no Django (the views in experiments/viewer.py check who may see what). A process
keeps a few generators open (an LRU keyed by file path), so a tile request costs one region read
and one JPEG encode when it is not cached yet, and one file read when it is.

Whole-slide formats open with OpenSlide; plain PNG/JPEG/TIFF images (which OpenSlide does not
read) are wrapped with openslide.ImageSlide. limit_bounds is off on purpose: the deepest Deep Zoom
level is then exactly the slide's level 0, so overlays and tile grids given in level-0 pixels
(predictions' plans, GeoJSON) line up with the image without an offset.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from xml.sax.saxutils import quoteattr

import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from .slide_files import MAX_REGION_PIXELS

TILE_SIZE = 254          # + 2 x OVERLAP = 256 px per tile as sent
OVERLAP = 1
FORMAT = "jpeg"
JPEG_QUALITY = 80
OPEN_GENERATORS = 8      # per process
# Part of the cache path: a change of tile geometry or quality never serves stale tiles.
CACHE_VARIANT = f"t{TILE_SIZE}-o{OVERLAP}-q{JPEG_QUALITY}"


class TileNotFound(LookupError):
    """No such level or tile address (the caller answers 404)."""


class SlideUnreadable(Exception):
    """The stored file cannot be opened or read any more (it was readable when checked)."""


class SlidePyramid:
    """One open slide and its Deep Zoom generator."""

    def __init__(self, path: str | Path):
        path = str(path)
        try:
            self._open(path)
        except (openslide.OpenSlideError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise SlideUnreadable(f"cannot open {path}: {exc}") from exc

    def _open(self, path: str) -> None:
        try:
            fmt = openslide.OpenSlide.detect_format(path)
        except openslide.OpenSlideError:
            fmt = None
        if fmt:
            self.slide = openslide.OpenSlide(path)
            self._lock = None                 # libopenslide reads regions from several threads
        else:
            # A plain image, checked when added: at most MAX_REGION_PIXELS (larger ones were
            # converted to pyramids), so decoding it whole stays within the cap.
            with Image.open(path) as image:
                self.slide = openslide.ImageSlide(image.convert("RGB"))
            self._lock = threading.Lock()     # one PIL image shared between request threads
        self.dz = DeepZoomGenerator(self.slide, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)

    @property
    def level_count(self) -> int:
        return self.dz.level_count

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.dz.level_dimensions[-1]

    def dzi_xml(self, tiles_url: str) -> str:
        """The DZI descriptor; `Url` tells OpenSeadragon where the tiles are (tiles_url ends in /)."""
        width, height = self.dimensions
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{FORMAT}" '
            f'Overlap="{OVERLAP}" TileSize="{TILE_SIZE}" Url={quoteattr(tiles_url)}>'
            f'<Size Width="{width}" Height="{height}"/></Image>\n'
        )

    def tile_jpeg(self, level: int, col: int, row: int) -> bytes:
        if not 0 <= level < self.dz.level_count:
            raise TileNotFound(f"no level {level}")
        cols, rows = self.dz.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileNotFound(f"no tile {col}_{row} at level {level}")
        _, slide_level, size = self.dz.get_tile_coordinates(level, (col, row))
        if size[0] * size[1] > MAX_REGION_PIXELS:
            # A file without a usable pyramid (added before files were converted on import):
            # this zoomed-out tile would decode more than the cap, so it is not made at all.
            raise TileNotFound(f"tile {level}/{col}_{row} would read {size[0]} x {size[1]} px of level {slide_level}")
        try:
            if self._lock is None:
                tile = self.dz.get_tile(level, (col, row))
            else:
                with self._lock:
                    tile = self.dz.get_tile(level, (col, row))
        except openslide.OpenSlideError as exc:
            raise SlideUnreadable(f"tile {level}/{col}_{row}: {exc}") from exc
        out = io.BytesIO()
        tile.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


_open: OrderedDict[str, SlidePyramid] = OrderedDict()
_open_lock = threading.Lock()


def pyramid(path: str | Path) -> SlidePyramid:
    """The open pyramid of a slide file, from this process's LRU (opened on first use)."""
    key = str(path)
    with _open_lock:
        found = _open.get(key)
        if found is not None:
            _open.move_to_end(key)
            return found
    opened = SlidePyramid(key)  # outside the lock: opening a big slide takes a while
    with _open_lock:
        found = _open.setdefault(key, opened)
        _open.move_to_end(key)
        while len(_open) > OPEN_GENERATORS:
            # Not closed explicitly: another thread may still be reading from it; the handle is
            # released when the last reference goes.
            _open.popitem(last=False)
    return found


def clear_open() -> None:
    with _open_lock:
        _open.clear()


class TileCache:
    """JPEG tiles on disk: <root>/<key>/<variant>/<level>/<col>_<row>.jpeg.

    The viewer keys a slide's tiles by the slide and its file's checksum ("<slide id>-<sha256>"):
    a slide's tiles are computed once whoever of its lab looks at it (the views check lab
    membership before they reach the cache), a different file under the same slide never gets
    old tiles, and two labs holding the same file never share tiles (a cache hit's speed would
    tell one lab that the other looked there). Writes are atomic (temporary file, then rename),
    so concurrent requests for one tile never read half a file.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str, level: int, col: int, row: int) -> Path:
        if not key.replace("-", "").isalnum():
            raise ValueError("bad cache key")
        return self.root / key / CACHE_VARIANT / str(level) / f"{col}_{row}.{FORMAT}"

    def get(self, key: str, level: int, col: int, row: int) -> bytes | None:
        try:
            with open(self.path(key, level, col, row), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def put(self, key: str, level: int, col: int, row: int, data: bytes) -> None:
        target = self.path(key, level, col, row)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tile-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


def cached_tile(cache: TileCache, slide_path: str | Path, key: str, level: int, col: int, row: int) -> tuple[bytes, bool]:
    """(JPEG bytes, whether they came from the cache); `key` names the slide's tiles in the cache."""
    data = cache.get(key, level, col, row)
    if data is not None:
        return data, True
    data = pyramid(slide_path).tile_jpeg(level, col, row)
    cache.put(key, level, col, row, data)
    return data, False
