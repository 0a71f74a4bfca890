"""The slide viewer: a page with OpenSeadragon, the slide's Deep Zoom descriptor and its tiles.

Every request, tiles included, finds the slide through Slide.objects.for_user(): a slide of
another lab does not exist for this user (404), whether the tile is cached or not. Tiles are
cached on disk (experiments.deepzoom.TileCache) and sent with Cache-Control: private, so a
shared proxy never keeps one lab's tile for another user; the browser may keep it.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles import finders
from django.http import Http404, HttpResponse, HttpResponseNotModified
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from . import deepzoom, viewer_layers
from .models import Slide

OPENSEADRAGON_JS = "vendor/openseadragon/openseadragon.min.js"
TILE_MAX_AGE = 24 * 3600  # a tile never changes: its cache key holds the file's checksum


def openseadragon_available() -> bool:
    """OpenSeadragon is served from our own static files (`make static-vendor`), never a CDN."""
    return bool(finders.find(OPENSEADRAGON_JS))


def tile_cache_dir() -> Path:
    configured = getattr(settings, "VIEWER_TILE_CACHE_DIR", "")
    return Path(configured) if configured else Path(settings.MEDIA_ROOT) / "cache" / "tiles"


@lru_cache(maxsize=4)
def _cache(root: str) -> deepzoom.TileCache:
    return deepzoom.TileCache(root)


def _ready_slide_file(request, pk) -> tuple[str, str]:
    """(file path, sha256) of a ready slide in one of the user's labs, else 404. One query."""
    found = next(iter(Slide.objects.for_user(request.user).filter(pk=pk, status=Slide.Status.READY)
                      .exclude(file="").order_by().values_list("file", "sha256")[:1]), None)
    if found is None or not found[1]:
        raise Http404("No such slide.")
    name, sha256 = found
    return Slide.file.field.storage.path(name), sha256


def _pyramid(path: str) -> deepzoom.SlidePyramid:
    try:
        return deepzoom.pyramid(path)
    except deepzoom.SlideUnreadable as exc:  # the stored file went missing or bad since it was checked
        raise Http404("The slide file cannot be read any more.") from exc


@require_GET
def slide_viewer(request, pk):
    slide = get_object_or_404(Slide.objects.for_user(request.user).select_related("experiment"), pk=pk)
    # What is drawn over the slide comes from the apps that registered layers (predictions: a
    # finished run's overlays); experiments/viewer_layers.py says why the page asks for them.
    overlays = viewer_layers.layers_for(request, slide) if slide.is_ready else None
    config = {
        "dzi": reverse("experiments:slide_dzi", args=[slide.pk]),
        "prefixUrl": settings.STATIC_URL.rstrip("/") + "/vendor/openseadragon/images/",
        "slide": {"width": slide.width, "height": slide.height, "mpp": slide.mpp},
        "layers": [{k: v for k, v in layer.items() if k != "legend"} for layer in overlays.layers] if overlays else [],
        "overlay": overlays.data_url if overlays else None,
    }
    return render(request, "experiments/viewer.html", {
        "slide": slide, "experiment": slide.experiment, "overlays": overlays, "config": config,
        "osd_available": openseadragon_available(), "osd_js": OPENSEADRAGON_JS,
    })


@require_GET
def slide_dzi(request, pk):
    path, _ = _ready_slide_file(request, pk)
    tiles_url = reverse("experiments:slide_tile", args=[pk, 0, 0, 0]).rsplit("/", 2)[0] + "/"
    response = HttpResponse(_pyramid(path).dzi_xml(tiles_url), content_type="application/xml")
    response["Cache-Control"] = "private, no-cache"
    return response


@require_GET
def slide_tile(request, pk, level, col, row):
    started = time.perf_counter()
    path, sha256 = _ready_slide_file(request, pk)
    etag = f'"{sha256[:20]}-{deepzoom.CACHE_VARIANT}-{level}-{col}-{row}"'
    if request.headers.get("If-None-Match") == etag:
        response = HttpResponseNotModified()
    else:
        cache = _cache(str(tile_cache_dir()))
        try:
            # Keyed by slide, not by file content alone: two labs holding the same file never
            # share cached tiles, so a hit's speed cannot tell one lab that another viewed it.
            data, hit = deepzoom.cached_tile(cache, path, f"{pk}-{sha256}", level, col, row)
        except deepzoom.TileNotFound as exc:
            raise Http404("No such tile.") from exc
        except deepzoom.SlideUnreadable as exc:
            raise Http404("The slide file cannot be read any more.") from exc
        response = HttpResponse(data, content_type="image/jpeg")
        if request.user.is_staff:
            response["X-Tile-Cache"] = "hit" if hit else "miss"
    response["ETag"] = etag
    response["Cache-Control"] = f"private, max-age={TILE_MAX_AGE}"
    if request.user.is_staff:
        # For staff only (devtools, bench/tile_latency.py): time spent in this view (lab check,
        # cache or slide). Users get no cache status or timing to learn anything from.
        response["Server-Timing"] = f"tile;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response
