"""Converting a slide without a usable pyramid into a pyramidal tiled TIFF, with libvips.

Plain Python, no Django. A single-level tiled TIFF or a large PNG/JPEG has no level small enough
to read whole within slide_files.MAX_REGION_PIXELS, so the thumbnail, the tissue mask and the
viewer's zoomed-out tiles could not be made from it without decoding it all. libvips streams the
source and writes the pyramid with a few tiles in memory, whatever the image size.

The copy is lossless (deflate, so often larger than a JPEG-compressed source): a figure computed on the converted file is a figure of the
pixels the lab uploaded. Its pixel size is kept when the source declared one, and written as
unknown (TIFF ResolutionUnit "none", which OpenSlide does not turn into an mpp) when it did not,
so no µm figure is ever computed from a print resolution.
"""

from __future__ import annotations

import os
from pathlib import Path

from .slide_files import SlideFileError

# Above this many pixels a file without a pyramid is refused rather than converted: converting
# takes minutes and the lossless copy many GB, which is the scanner software's job.
MAX_CONVERT_PIXELS = 40_000 * 40_000
TILE = 256


def convert_to_pyramid(source: str | Path, target: str | Path, mpp: float | None) -> Path:
    """Write `target` (a .tiff) as a tiled, pyramidal, lossless copy of `source`.

    Raises SlideFileError with a sentence for the lab when libvips cannot read the source.
    """
    import pyvips  # loaded only in the worker that converts: libvips starts its own threads
    import tifffile

    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    try:
        image = pyvips.Image.new_from_file(str(source), access="sequential", fail=True)
        if image.hasalpha():
            image = image.flatten(background=[255, 255, 255])  # transparent is glass, as elsewhere
        image = image.colourspace("srgb").cast("uchar")
        if image.bands != 3:
            image = image.extract_band(0, n=3)
        resolution = {"resunit": "cm", "xres": 1000 / mpp, "yres": 1000 / mpp} if mpp else {}
        # deflate at level 1, no predictor: a textured 20,000 x 20,000 px file converted in 5 s on
        # the development machine, against 26 s at the default level with the horizontal predictor.
        image.tiffsave(str(partial), tile=True, tile_width=TILE, tile_height=TILE, pyramid=True,
                       compression="deflate", level=1, bigtiff=True, keep="none", **resolution)
    except pyvips.Error as exc:
        partial.unlink(missing_ok=True)
        raise SlideFileError("The image could not be converted to a pyramidal TIFF: part of it cannot be "
                             "decoded (the file may be damaged or truncated).") from exc
    if not mpp:
        with tifffile.TiffFile(partial, mode="r+b") as tiff:
            for page in tiff.pages:
                page.tags["ResolutionUnit"].overwrite(1)   # RESUNIT_NONE: pixel size unknown
    os.replace(partial, target)
    return target
