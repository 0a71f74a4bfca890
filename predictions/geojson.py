"""A slide run's regions as GeoJSON that QuPath imports, and the per-tile data the viewer shows.

Plain Python, no Django: everything comes in as a Plan, the tile rows (in tile order, as the
aggregate step sees them) and the tissue mask.

Coordinates are level-0 pixels of the slide, origin at the top-left corner, x to the right and y
down: what QuPath expects (File > Import objects, or drag the .geojson onto the image). Each
feature follows QuPath's GeoJSON conventions:

    {"type": "Feature", "id": "<uuid>", "geometry": {...},
     "properties": {"objectType": "annotation" | "detection", "name": "...",
                    "classification": {"name": "Positive", "color": [r, g, b]},
                    "measurements": {"name": number, ...}}}

What a run exports is what its pipeline declares (predictions/pipelines/base.py), never decided
here by the pipeline's name:

- exports_tissue_regions: one "Tissue" annotation per connected piece of tissue (polygon with its
  holes), traced on the tissue mask, scaled to level 0 (tiles are then not exported).
- otherwise, for a tiled pipeline: one detection per analysed tile with its tile-table columns as
  measurements, classified as tile_classes() says (e.g. Positive / Negative by a cut-off the user
  sets at download, or the predicted class), and one annotation per region class: the tiles of
  that class merged into one region.
- per-object records (e.g. nuclei), when the run keeps them: one detection each, of the
  pipeline's detection_class (nucleus_features_json; streamed by predictions/regions.py).

Tile squares are clipped to the slide (the grid's last row and column run past its edge).
Merged regions are exact unions of tile squares (rectilinear polygons with holes), not one
square per tile, so QuPath sees valid geometries and the right areas.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, Iterable

import numpy as np

from .geometry import PolygonRings, Ring, grid_polygons, mask_polygons, polygons_area
from .pipelines import Plan

TISSUE = ("Tissue", (0, 160, 80))
_NAMESPACE = uuid.UUID("5b0c3f4e-8a8f-4f0e-9d0e-6a1b7b2f2c11")


# -- the viewer's per-tile data ----------------------------------------------------------------
def overlay_data(code, plan: Plan, rows: list[dict], mask: np.ndarray | None, width: int, height: int) -> dict:
    """What the viewer needs to show per-tile values and the tissue outline (compact JSON)."""
    records = code.tile_records(plan, rows) if code.is_tiled else []
    skip = {"tile", "row", "col", "x", "y", "size_px"}
    columns = [k for k in (records[0] if records else {}) if k not in skip]
    primary = (code.tile_value.column, code.tile_value.label) if code.tile_value else None
    if primary and columns and primary[0] in columns:  # the primary value first
        columns.remove(primary[0])
        columns.insert(0, primary[0])
    outline = []
    if mask is not None and mask.any():
        for polygon in mask_polygons(mask, width, height):
            outline.extend([_round_ring(ring, 1) for ring in polygon])
    return {
        "pipeline": code.name,
        "slide": {"width": width, "height": height},
        "tile_size": plan.tile_size_level0 if code.is_tiled else None,
        "grid": list(plan.grid_shape),
        "primary": {"column": primary[0], "label": primary[1]} if primary else None,
        "columns": columns,
        "tiles": [[rec["row"], rec["col"], *[_json_value(rec.get(k)) for k in columns]] for rec in records],
        "tissue_outline": outline,
    }


# -- geometry (predictions/geometry.py) and its GeoJSON form --------------------------------------
def _tile_ring(x: float, y: float, size: float, width: int, height: int) -> Ring:
    x1, y1 = min(x + size, width), min(y + size, height)
    return [(x, y), (x1, y), (x1, y1), (x, y1), (x, y)]


def _round_ring(ring: Ring, digits: int = 2) -> list[list[float]]:
    out = []
    for x, y in ring:
        rx, ry = round(x, digits), round(y, digits)
        out.append([int(rx) if float(rx).is_integer() else rx, int(ry) if float(ry).is_integer() else ry])
    return out


def _geometry(polygons: list[PolygonRings]) -> dict:
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": [_round_ring(r) for r in polygons[0]]}
    return {"type": "MultiPolygon", "coordinates": [[_round_ring(r) for r in p] for p in polygons]}


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- features ---------------------------------------------------------------------------------
def _feature(key: str, geometry: dict, object_type: str, name: str | None = None,
             classification: tuple[str, tuple[int, int, int]] | None = None,
             measurements: dict | None = None) -> dict:
    properties: dict[str, Any] = {"objectType": object_type}
    if name:
        properties["name"] = name
    if classification:
        properties["classification"] = {"name": classification[0], "color": list(classification[1])}
    numbers = {k: float(v) for k, v in (measurements or {}).items()
               if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(float(v))}
    if numbers:
        properties["measurements"] = numbers
    return {"type": "Feature", "id": str(uuid.uuid5(_NAMESPACE, key)), "geometry": geometry,
            "properties": properties}


def _area_measurements(polygons: list[PolygonRings], mpp: float | None) -> dict:
    area_px = polygons_area(polygons)
    out = {"Area px^2": round(area_px, 1)}
    if mpp:
        out["Area µm^2"] = round(area_px * mpp ** 2, 1)
    return out


def feature_collection(code, plan: Plan, rows: list[dict], mask: np.ndarray | None, width: int,
                       height: int, *, key: str, class_names: Iterable[str] = (), options: dict | None = None,
                       detections: bool = True, provenance: dict | None = None) -> dict:
    """The run's regions as a GeoJSON FeatureCollection (see the module docstring); options: the
    pipeline's export options (code.parse_export_options), defaults when None."""
    features: list[dict] = []
    mpp = plan.mpp
    if options is None:
        options = code.parse_export_options({})
    if code.exports_tissue_regions:
        if mask is not None:
            for i, polygon in enumerate(mask_polygons(mask, width, height)):
                features.append(_feature(f"{key}/tissue/{i}", _geometry([polygon]), "annotation",
                                         name=f"Tissue region {i + 1}", classification=TISSUE,
                                         measurements=_area_measurements([polygon], mpp)))
    elif code.is_tiled:
        records = code.tile_records(plan, rows)
        size0 = plan.tile_size_level0
        classes = code.tile_classes(records, options, tuple(class_names))
        tile_class = classes.per_tile if classes else [None] * len(records)
        regions = {cls: [c == cls for c in tile_class] for cls in classes.regions} if classes else {}
        region_name = classes.region_name if classes else None
        for cls, selected in regions.items():
            grid = np.zeros(plan.grid_shape, bool)
            for rec, chosen in zip(records, selected):
                if chosen:
                    grid[rec["row"], rec["col"]] = True
            if not grid.any():
                continue
            polygons = grid_polygons(grid, size0, width, height)
            features.append(_feature(f"{key}/region/{cls[0]}", _geometry(polygons), "annotation",
                                     name=region_name or f"{cls[0]} tiles", classification=cls,
                                     measurements={"Tiles": int(sum(selected)), **_area_measurements(polygons, mpp)}))
        if detections:
            skip = {"tile", "row", "col", "x", "y", "size_px", "class"}
            for rec, cls in zip(records, tile_class):
                ring = _tile_ring(rec["x"], rec["y"], size0, width, height)
                features.append(_feature(f"{key}/tile/{rec['tile']}", _geometry([[ring]]), "detection",
                                         name=f"Tile {rec['tile']} (row {rec['row']}, col {rec['col']})",
                                         classification=cls,
                                         measurements={k: v for k, v in rec.items() if k not in skip}))
    collection = {"type": "FeatureCollection", "features": features}
    if provenance:
        # A foreign member (RFC 7946 §6.1): readers that do not know it ignore it.
        collection["histoia"] = provenance
    return collection


# -- per-object detections (nuclei) and the streamed collection --------------------------------
# New functions for runs that keep one record per object (predictions/detections.py): x, y (the
# centroid, level-0 px) and area (level-0 px²). Each becomes a QuPath detection: a regular
# 12-gon with the object's area, centred on its centroid.
NUCLEUS = ("Nucleus", (60, 110, 230))
NUCLEUS_VERTICES = 12
NUCLEUS_BLOCK = 10_000
_UNIT_CIRCLE = np.stack([np.cos(np.arange(NUCLEUS_VERTICES + 1) * 2 * np.pi / NUCLEUS_VERTICES),
                         np.sin(np.arange(NUCLEUS_VERTICES + 1) * 2 * np.pi / NUCLEUS_VERTICES)], axis=1)
_UNIT_CIRCLE[-1] = _UNIT_CIRCLE[0]   # closed ring, exactly


def polygon_radius(area, vertices: int = NUCLEUS_VERTICES) -> np.ndarray:
    """Circumradius of the regular polygon of `vertices` sides whose area is `area`:
    area = vertices / 2 * R² * sin(2π / vertices) (3 R² for 12 sides)."""
    area = np.maximum(np.asarray(area, dtype=np.float64), 0.0)
    return np.sqrt(area / (vertices / 2 * math.sin(2 * math.pi / vertices)))


def nucleus_rings(records: np.ndarray, width: int | None = None, height: int | None = None) -> np.ndarray:
    """(N, 13, 2) closed rings, float64: the 12-gon of each record's area around its centroid,
    wound positively in (x, y) like the other exteriors, kept on the width x height slide."""
    records = np.asarray(records, dtype=np.float64).reshape(-1, 3)
    radius = polygon_radius(records[:, 2])
    rings = records[:, None, :2] + radius[:, None, None] * _UNIT_CIRCLE[None, :, :]
    if width is not None and height is not None:
        np.clip(rings[..., 0], 0, width, out=rings[..., 0])
        np.clip(rings[..., 1], 0, height, out=rings[..., 1])
    return rings


def _nucleus_template(with_um: bool, path_class=NUCLEUS) -> str:
    ring = ",".join(["[%.2f,%.2f]"] * (NUCLEUS_VERTICES + 1))
    measurements = '"Area px^2":%.1f' + (',"Area µm^2":%.2f' if with_um else "")
    # The class name comes from the pipeline: JSON-quoted, and "%" doubled for the % formatting.
    name = json.dumps(path_class[0], ensure_ascii=False).replace("%", "%%")
    return ('{"type":"Feature","id":"%s","geometry":{"type":"Polygon","coordinates":[[' + ring + ']]},'
            '"properties":{"objectType":"detection","classification":{"name":' + name + ',"color":['
            + ",".join(str(int(c)) for c in path_class[1]) + ']},"measurements":{' + measurements + '}}}')


def nucleus_features_json(records: np.ndarray, *, key: str, mpp: float | None, start: int = 0,
                          width: int | None = None, height: int | None = None, path_class=NUCLEUS) -> str:
    """The records as QuPath detections, JSON text: the features joined by "," (no brackets).

    One feature per record: a Polygon (the 12-gon of its area, 0.01 px), objectType "detection",
    classification path_class (the pipeline's detection_class; Nucleus by default), measurements "Area px^2" and, with a pixel size, "Area µm^2"; id
    uuid5 of key/nucleus/i, i the record's index in the run's file (start: the index of
    records[0]). Formatted directly (not through json.dumps): about 6x faster, the same JSON.
    """
    records = np.asarray(records, dtype=np.float64).reshape(-1, 3)
    if not len(records):
        return ""
    rings = nucleus_rings(records, width, height).reshape(len(records), -1)
    areas = np.maximum(records[:, 2], 0.0)
    columns = [rings, areas[:, None]]
    if mpp:
        columns.append(areas[:, None] * mpp ** 2)
    values = np.concatenate(columns, axis=1).tolist()
    template = _nucleus_template(bool(mpp), path_class)
    names = _uuid5_texts(f"{key}/nucleus/", range(start, start + len(records)))
    return ",".join([template % (name, *row) for name, row in zip(names, values)])


def _uuid5_texts(prefix: str, numbers) -> list[str]:
    """str(uuid.uuid5(_NAMESPACE, f"{prefix}{n}")) for each n, computed the same way (SHA-1 of
    the namespace's bytes and the name, version and variant bits set) without building UUID
    objects, which cost more than the rest of a nucleus's feature."""
    import hashlib

    base = hashlib.sha1(_NAMESPACE.bytes + prefix.encode())
    out = []
    for n in numbers:
        h = base.copy()
        h.update(str(n).encode())
        b = bytearray(h.digest()[:16])
        b[6] = (b[6] & 0x0F) | 0x50
        b[8] = (b[8] & 0x3F) | 0x80
        x = b.hex()
        out.append(f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}")
    return out


def nucleus_features(records: np.ndarray, *, key: str, mpp: float | None, start: int = 0,
                     width: int | None = None, height: int | None = None, path_class=NUCLEUS) -> list[dict]:
    """nucleus_features_json's features as dicts (for a few records; the export streams text)."""
    return json.loads("[" + nucleus_features_json(records, key=key, mpp=mpp, start=start, width=width,
                                                  height=height, path_class=path_class) + "]")


def nucleus_feature_blocks(records: np.ndarray, *, key: str, mpp: float | None, width: int | None = None,
                           height: int | None = None, block: int | None = None, path_class=NUCLEUS):
    """nucleus_features_json for `block` (NUCLEUS_BLOCK) records at a time (records may be
    memory-mapped: only one block is read and held at once)."""
    block = block or NUCLEUS_BLOCK
    for start in range(0, len(records), block):
        yield nucleus_features_json(np.asarray(records[start:start + block]), key=key, mpp=mpp, start=start,
                                    width=width, height=height, path_class=path_class)


def collection_chunks(collection: dict, extra_blocks=(), *, dumps=None):
    """The FeatureCollection `collection` as JSON text in pieces, with the features of each block
    of `extra_blocks` (a list of feature dicts, or their JSON text joined by ",", as
    nucleus_feature_blocks yields) appended to its "features", after the ones it holds.

    Joined, the pieces are exactly json.dumps(collection with the extra features,
    separators=(",", ":"), ensure_ascii=False), keys in the collection's own order; blocks are
    taken one at a time, so only one is in memory.
    """
    import itertools

    dumps = dumps or (lambda value: json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    members = list(collection.items())
    yield "{"
    first_member = True
    for name, value in members:
        if not first_member:
            yield ","
        first_member = False
        yield dumps(name) + ":"
        if name != "features":
            yield dumps(value)
            continue
        yield "["
        started = False
        features = list(value)
        blocks = (features[i:i + 1000] for i in range(0, len(features), 1000))
        for block in itertools.chain(blocks, extra_blocks):
            # A list's JSON is its items' JSON joined by "," (the separator above).
            text = block if isinstance(block, str) else dumps(list(block))[1:-1] if block else ""
            if text:
                if started:
                    yield ","
                yield text
                started = True
        yield "]"
    yield "}"
