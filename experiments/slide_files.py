"""Reading slide files: OpenSlide for whole-slide formats, Pillow for plain images.

Plain Python, no Django: the validation task and every pipeline read slides through this one
door, so a format that opens here opens everywhere. Errors are SlideFileError with a sentence a
lab member understands; the technical cause is kept as __cause__ for the logs.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

# Memory is bounded by design, whatever the file says: no read decodes more than this many pixels
# at once (16 Mpx: 64 MB as RGBA). Pipelines read tiles; whole-slide views (thumbnail, tissue
# mask) read a pyramid level in bands of at most this size. A file with no level small enough to
# read that way (a single-level tiled TIFF, a large PNG or JPEG) is converted into a pyramidal
# tiled TIFF when it is checked (experiments/pyramids.py); until then it is not read at all.
MAX_REGION_PIXELS = 16_000_000
# Declared dimensions above this are refused before anything is decoded (a hostile header).
MAX_DECLARED_PIXELS = 250_000 * 250_000

# Pillow decodes plain images whole, so it may never open one above the region cap: it warns past
# MAX_IMAGE_PIXELS and raises DecompressionBombError past twice that. Larger plain images are
# measured and converted by libvips instead, which streams them.
Image.MAX_IMAGE_PIXELS = MAX_REGION_PIXELS

# Plain image formats Pillow reads, by file name ending.
PLAIN_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}

UNREADABLE = (
    "This file is not a slide image Histo-IA can read: the format was not recognised. "
    "It may be corrupt or incomplete, or not an image at all. Supported: Aperio SVS, "
    "Hamamatsu NDPI/VMS, Leica SCN, MIRAX, Philips TIFF, Sakura, Trestle, Ventana, "
    "Zeiss CZI, DICOM, generic tiled TIFF, and plain PNG, JPEG or TIFF images."
)


DAMAGED_TIFF = (
    "This file starts like a TIFF-based slide (SVS, NDPI, tiled TIFF...) but the rest of it is "
    "damaged or missing: it may be truncated, for example by an interrupted upload or copy. "
    "Upload it again from the original."
)


class SlideFileError(Exception):
    """A slide that cannot be used; str(error) is shown to the user as it is."""


class NeedsPyramid(SlideFileError):
    """The file has no level small enough to read within MAX_REGION_PIXELS: convert it first."""


@dataclass(frozen=True)
class SlideInfo:
    vendor: str
    width: int
    height: int
    level_count: int
    mpp: float | None
    objective_power: float | None


def sha256_of(path: str | Path, chunk_size: int = 4 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# libvips loader names for the plain formats Pillow also reads.
_VIPS_LOADERS = {"pngload": "png", "jpegload": "jpeg", "tiffload": "tiff"}


def _plain_header(path: Path) -> tuple[int, int, str]:
    """(width, height, format) of a plain image too large for Pillow, from its header alone."""
    import pyvips  # only for images too large for Pillow; libvips starts threads when loaded

    try:
        image = pyvips.Image.new_from_file(str(path), access="sequential")
        return image.width, image.height, _VIPS_LOADERS.get(image.get("vips-loader"), "image")
    except pyvips.Error as exc:
        raise SlideFileError("The image is damaged and cannot be decoded (it may be truncated).") from exc


def _float_or_none(value) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if np.isfinite(result) and result > 0 else None


class SlideReader:
    """One open slide. Coordinates are level-0 pixels; regions come back as RGB uint8 arrays."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise SlideFileError("The slide file is missing from storage.") from exc
        if size == 0:
            raise SlideFileError("The file is empty (0 bytes): the upload or copy did not complete.")
        self._slide = None
        self._image: Image.Image | None = None
        self._plain_format = ""
        try:
            fmt = openslide.OpenSlide.detect_format(str(self.path))
        except openslide.OpenSlideError:
            fmt = None
        if fmt:
            self._open_openslide(fmt)
        else:
            self._open_pillow()

    def _open_openslide(self, fmt: str) -> None:
        try:
            self._slide = openslide.OpenSlide(str(self.path))
            width, height = self._slide.dimensions
            if width * height > MAX_DECLARED_PIXELS:
                raise SlideFileError(
                    f"The file declares {width:,} x {height:,} pixels, more than any real slide; "
                    "it is refused."
                )
            props = self._slide.properties
            # Reading one small region early catches truncated files now, not mid-pipeline.
            self._slide.read_region((0, 0), self._slide.level_count - 1, (1, 1))
        except SlideFileError:
            raise
        except openslide.OpenSlideError as exc:
            raise SlideFileError(
                "The slide file is damaged and cannot be read (it may be truncated or corrupt). "
                f"Detail: {exc}"
            ) from exc
        mpp_x = _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X))
        mpp_y = _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_Y))
        self.info = SlideInfo(
            vendor=props.get(openslide.PROPERTY_NAME_VENDOR) or fmt,
            width=width,
            height=height,
            level_count=self._slide.level_count,
            mpp=(mpp_x + mpp_y) / 2 if mpp_x and mpp_y else mpp_x or mpp_y,
            objective_power=_float_or_none(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
        )
        self.level_dimensions = self._slide.level_dimensions
        self.level_downsamples = self._slide.level_downsamples

    def _open_pillow(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # measured below
                image = Image.open(self.path)
            width, height = image.size
            fmt = (image.format or "image").lower()
        except Image.DecompressionBombError:
            # Too large for Pillow to decode whole: measure it with libvips, which reads only
            # the header here and streams the pixels when the slide is converted.
            image = None
            width, height, fmt = _plain_header(self.path)
        except (OSError, SyntaxError, ValueError) as exc:
            raise SlideFileError(DAMAGED_TIFF if self._looks_like_tiff() else UNREADABLE) from exc
        if fmt not in ("png", "jpeg", "tiff"):
            raise SlideFileError(UNREADABLE)
        expected = PLAIN_SUFFIXES.get(self.path.suffix.lower())
        if expected != fmt:
            # A renamed file is usually a mistake (the wrong file was picked): say what it is.
            raise SlideFileError(
                f"This file is a {fmt.upper()} image but its name ends in “{self.path.suffix}”. "
                f"If it is the image you meant, rename it to .{'jpg' if fmt == 'jpeg' else fmt} and upload it again."
            )
        if width * height > MAX_DECLARED_PIXELS:
            raise SlideFileError(f"The image declares {width:,} x {height:,} pixels, more than any real slide; "
                                 "it is refused.")
        # Plain images carry no reliable pixel size (DPI is a print setting), so mpp stays unknown.
        self.info = SlideInfo(fmt, width, height, 1, None, None)
        self.level_dimensions = ((width, height),)
        self.level_downsamples = (1.0,)
        self._plain_format = fmt
        if self.needs_pyramid:
            if image is not None:
                image.close()
            return  # never decoded: it is converted, or refused, by the caller
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise SlideFileError(
                "The image is damaged and cannot be decoded (it may be truncated)."
            ) from exc
        self._image = image.convert("RGB")

    @property
    def needs_pyramid(self) -> bool:
        """True when no level of the file can be read whole within MAX_REGION_PIXELS."""
        width, height = self.level_dimensions[-1]
        return width * height > MAX_REGION_PIXELS

    def describe(self) -> str:
        """What the file is, in a few words, e.g. "a single-level TIFF of 20,000 x 20,000 px"."""
        kind = self._plain_format.upper() or self.info.vendor
        levels = "single-level " if self.info.level_count == 1 else f"{self.info.level_count}-level "
        return f"a {levels}{kind} of {self.info.width:,} x {self.info.height:,} px"

    def _looks_like_tiff(self) -> bool:
        # SVS, NDPI, SCN, Philips and generic slides are TIFF inside; a broken one still starts so.
        with open(self.path, "rb") as fh:
            return fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

    # -- reading -------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.info.width, self.info.height

    def best_level_for_downsample(self, downsample: float) -> int:
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = level
        return best

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array (h, w, 3); transparent or out-of-slide pixels come back white.

        At most MAX_REGION_PIXELS at once: a larger request is a caller's mistake, refused before
        anything is decoded.
        """
        w, h = size
        if w * h > MAX_REGION_PIXELS:
            raise ValueError(f"a region of {w} x {h} px is more than MAX_REGION_PIXELS; read it in parts")
        if self.needs_pyramid:
            raise NeedsPyramid(f"This slide is {self.describe()} with no smaller level; it must be converted "
                               "to a pyramidal TIFF before it can be read.")
        if self._slide is not None:
            try:
                region = self._slide.read_region(location, level, size)
            except openslide.OpenSlideError as exc:
                raise SlideFileError(f"Part of the slide could not be read (damaged file): {exc}") from exc
            rgba = np.asarray(region)
            rgb = rgba[..., :3].astype(np.uint8, copy=True)
            rgb[rgba[..., 3] == 0] = 255
            return rgb
        # Past the image's edge is glass (white), as OpenSlide's transparent pixels are made
        # above: Pillow's crop would pad with black, i.e. the darkest possible tissue.
        x, y = location
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.info.width), min(y + h, self.info.height)
        if x1 > x0 and y1 > y0:
            out[y0 - y: y1 - y, x0 - x: x1 - x] = np.asarray(self._image.crop((x0, y0, x1, y1)))
        return out

    def read_downsampled(self, downsample: float) -> tuple[np.ndarray, float]:
        """The whole slide at roughly 1/downsample scale, and the exact scale used.

        Reads the nearest pyramid level at or below the wanted scale and resizes it. A level
        larger than MAX_REGION_PIXELS is read and resized in bands of rows, each band resized
        over exactly its share of the output, so memory stays bounded for a slide of any size.
        """
        level = self.best_level_for_downsample(downsample)
        lw, lh = self.level_dimensions[level]
        target = (max(1, round(self.info.width / downsample)), max(1, round(self.info.height / downsample)))
        if lw * lh <= MAX_REGION_PIXELS:
            region = self.read_region((0, 0), level, (lw, lh))
            if (lw, lh) != target:
                region = np.asarray(Image.fromarray(region).resize(target, Image.Resampling.BOX))
            return region, self.info.width / target[0]
        tw, th = target
        out = np.empty((th, tw, 3), dtype=np.uint8)
        scale = lh / th                                  # level rows per output row
        # Output rows per band: a band's level rows are its share rounded out at both ends (+2).
        band_rows = max(1, int((MAX_REGION_PIXELS // lw - 2) / scale))
        ds = self.level_downsamples[level]
        for ty0 in range(0, th, band_rows):
            ty1 = min(th, ty0 + band_rows)
            y0, y1 = math.floor(ty0 * scale), min(lh, math.ceil(ty1 * scale))
            band = self.read_region((0, round(y0 * ds)), level, (lw, y1 - y0))
            box = (0.0, ty0 * scale - y0, float(lw), ty1 * scale - y0)
            out[ty0:ty1] = np.asarray(Image.fromarray(band).resize((tw, ty1 - ty0), Image.Resampling.BOX, box=box))
        return out, self.info.width / tw

    def thumbnail(self, max_size: int = 512) -> Image.Image:
        """The whole slide, its longer side max_size px, read within the region cap."""
        downsample = max(self.info.width, self.info.height) / max_size
        region, _ = self.read_downsampled(max(downsample, 1.0))
        return Image.fromarray(region)

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
        if self._image is not None:
            self._image.close()

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
