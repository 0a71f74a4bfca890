"""A finished slide run's regions as GeoJSON (QuPath import), its per-tile data for the viewer
and, for runs that keep one record per object (nuclei), those objects in a box.

All are found through Prediction.objects.for_user(): another lab's runs are 404. The shapes are
built by predictions/geojson.py (plain Python) from the run's plan, its tile rows, its tissue
mask and its detections file (predictions/detections.py); a finished run never changes, so the
browser may keep them a while (private only).

A run with detections answers its GeoJSON as a stream: the collection's head and the regions and
tiles as before, then one QuPath detection per object, read from the memory-mapped file a block
at a time, so the web process's memory does not grow with the number of nuclei.
"""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.http import require_GET
from PIL import Image

from . import detections as detection_files
from . import geojson
from .models import Prediction, SlideRun, Status
from .pipelines import ParamError, Plan

CACHE_CONTROL = "private, max-age=300"
# The viewer's box query: at most this many objects an answer.
BOX_LIMIT = 5000


def finished_run(user, pk) -> SlideRun:
    """A succeeded slide run in one of the user's labs, else 404 (also used by the API)."""
    run = get_object_or_404(
        SlideRun.objects.filter(prediction__in=Prediction.objects.for_user(user))
        .select_related("slide", "prediction__pipeline", "prediction__model"), pk=pk)
    if run.status != Status.SUCCEEDED or not run.plan:
        raise Http404("This slide has no finished result yet.")
    if not run.prediction.pipeline.installed:
        # Its figures and images stay readable on the prediction page; shapes need its code.
        raise Http404(f"This result was made by {run.prediction.pipeline}, which is no longer installed.")
    return run


def _inputs(run: SlideRun):
    code = run.prediction.pipeline.code
    plan = Plan.from_json(run.plan)
    rows = [row for batch in run.batches.order_by("index").values_list("rows", flat=True) for row in batch]
    mask = None
    if run.tissue_mask:
        with run.tissue_mask.open("rb") as fh:
            mask = read_mask(fh.read())
    return code, plan, rows, mask


def read_mask(data: bytes) -> np.ndarray:
    """The tissue mask from its PNG: 8-bit grey (255 = tissue) as prepare stores it; runs made
    before result images were stored as overlay-<name>.png may have had it replaced by an RGBA
    result image of the same name (opaque on tissue), so read the alpha channel when there is one."""
    image = Image.open(io.BytesIO(data))
    if "A" in image.getbands():
        return np.asarray(image.getchannel("A")) > 127
    return np.asarray(image.convert("L")) > 127


def regions_collection(run: SlideRun, *, options: dict | None = None, detections: bool = True) -> dict:
    """The run's GeoJSON FeatureCollection without its per-object detections (regions and
    tiles: the API can answer with this as it is). regions_chunks adds the objects, streamed.
    options: the pipeline's export options, parsed (its defaults when None)."""
    code, plan, rows, mask = _inputs(run)
    prediction = run.prediction
    options = code.parse_export_options({}) if options is None else options
    return geojson.feature_collection(
        code, plan, rows, mask, run.slide.width, run.slide.height,
        key=f"run-{run.pk}", class_names=(prediction.model.class_names if prediction.model_id else ()),
        options=options, detections=detections,
        provenance={"prediction": prediction.pk, "run": run.pk, "slide": run.slide.original_name,
                    "slide_sha256": run.slide_sha256, "pipeline": prediction.pipeline.name,
                    "pipeline_version": prediction.pipeline.version,
                    "model_sha256": prediction.model_sha256 or None,
                    "export_options": options,
                    "units": "level-0 pixels, origin top-left, y down"})


def regions_chunks(run: SlideRun, *, options: dict | None = None, detections: bool = True):
    """The whole GeoJSON as text pieces: regions_collection's features, then (with detections
    and a detections file) one QuPath detection per object, NUCLEUS_BLOCK objects at a time.
    The provenance ("histoia") then says how many ("objects")."""
    collection = regions_collection(run, options=options, detections=detections)
    blocks = ()
    if detections and run.detections:
        records = detection_files.load(run)
        plan = Plan.from_json(run.plan)
        if "histoia" in collection:
            collection["histoia"]["objects"] = len(records)
        blocks = geojson.nucleus_feature_blocks(records, key=f"run-{run.pk}", mpp=plan.mpp,
                                                width=run.slide.width, height=run.slide.height,
                                                path_class=run.prediction.pipeline.code.detection_class)
    return geojson.collection_chunks(collection, blocks)


def geojson_filename(run: SlideRun) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", run.slide.original_name.rsplit(".", 1)[0])[:80] or "slide"
    return f"prediction-{run.prediction_id}-{stem}-regions.geojson"


def regions_response(request, run: SlideRun) -> HttpResponse:
    """The GeoJSON download of a run already found in the user's labs (page and API alike).

    Query: the pipeline's export options (e.g. a Positive cut-off, see its export_options),
    detections=0 (regions only: no tiles, no objects), download=0 (inline instead of attachment).
    404 until the run has succeeded; 400 for a bad option, with the reason under its name. A run with a detections file (one record per nucleus) is
    answered as a StreamingHttpResponse; any other as before, in one piece.
    """
    if run.status != Status.SUCCEEDED or not run.plan:
        raise Http404("This slide has no finished result yet.")
    code = run.prediction.pipeline.code
    options = {}
    for param in code.export_options:
        try:
            options[param.name] = param.parse(request.GET.get(param.name))
        except ParamError as exc:
            return JsonResponse({param.name: [str(exc)]}, status=400)
    detections = request.GET.get("detections", "1").lower() not in ("0", "false", "no", "off")
    if detections and run.detections:
        chunks = regions_chunks(run, options=options, detections=detections)
        response = StreamingHttpResponse((chunk.encode() for chunk in _gathered(chunks)),
                                         content_type="application/geo+json")
    else:
        data = regions_collection(run, options=options, detections=detections)
        response = HttpResponse(json.dumps(data, separators=(",", ":"), ensure_ascii=False),
                                content_type="application/geo+json")
    disposition = "attachment" if request.GET.get("download", "1") != "0" else "inline"
    response["Content-Disposition"] = f'{disposition}; filename="{geojson_filename(run)}"'
    response["Cache-Control"] = CACHE_CONTROL
    return response


def _gathered(chunks, size: int = 1 << 18):
    """Small text pieces gathered into writes of about `size` characters."""
    pending, length = [], 0
    for chunk in chunks:
        if len(chunk) >= size:   # a block of features: as it is, not copied once more
            if pending:
                yield "".join(pending)
                pending, length = [], 0
            yield chunk
            continue
        pending.append(chunk)
        length += len(chunk)
        if length >= size:
            yield "".join(pending)
            pending, length = [], 0
    if pending:
        yield "".join(pending)


@require_GET
def run_regions_geojson(request, pk):
    """GET /predictions/runs/<pk>/regions.geojson[?threshold=0.1&detections=0]"""
    return regions_response(request, finished_run(request.user, pk))


@require_GET
def run_overlay(request, pk):
    """GET /predictions/runs/<pk>/overlay.json: per-tile values and the tissue outline, for the viewer."""
    run = finished_run(request.user, pk)
    code, plan, rows, mask = _inputs(run)
    data = geojson.overlay_data(code, plan, rows, mask, run.slide.width, run.slide.height)
    data["run"] = run.pk
    # Per-object records (nuclei): the viewer draws those in view when zoomed in.
    data["has_detections"] = bool(run.detections)
    if run.detections:
        data["detections_url"] = reverse("predictions:run_detections", args=[run.pk])
    response = JsonResponse(data)
    response["Cache-Control"] = CACHE_CONTROL
    return response


def _box(request) -> tuple[float, float, float, float]:
    values = []
    for name in ("x0", "y0", "x1", "y1"):
        raw = request.GET.get(name)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number (level-0 px)") from None
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number (level-0 px)")
        values.append(value)
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the box needs x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


@require_GET
def run_detections(request, pk):
    """GET /predictions/runs/<pk>/detections.json?x0=&y0=&x1=&y1=: the run's objects (nuclei)
    whose centroid lies in the level-0 px box [x0, x1) x [y0, y1), for the viewer:

        {"objects": [[x, y, r], ...], "total": n, "truncated": false}

    x, y the centroid and r the equivalent radius (sqrt(area / pi)), level-0 px rounded to whole
    pixels; at most BOX_LIMIT objects (evenly spread over the box, "truncated": true, when more
    lie in it); total: how many lie in it. A run without detections answers no objects; a missing
    or bad box is 400.
    """
    run = finished_run(request.user, pk)
    try:
        x0, y0, x1, y1 = _box(request)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    records = detection_files.load(run)
    found, total = detection_files.box_query(records, x0, y0, x1, y1, BOX_LIMIT)
    radius = np.rint(detection_files.equivalent_radius(found[:, 2])).astype(np.int64)
    xy = np.rint(found[:, :2]).astype(np.int64)
    objects = np.column_stack([xy, radius]).tolist() if len(found) else []
    response = JsonResponse({"objects": objects, "total": total, "truncated": total > len(objects)})
    response["Cache-Control"] = CACHE_CONTROL
    return response
