"""What the built-in pipelines give on fixed slides, reduced to a comparable fingerprint.

tests/test_builtin_outputs.py checks that every figure, overlay and export of the four built-in
pipelines stays the same as recorded in tests/golden/builtin_outputs.json (recorded before the
pipeline contract was reshaped, so a refactoring that changes a number fails). To record it again
on purpose, after a change of method that comes with a new pipeline version:

    DEBUG=1 .venv/bin/python -m tests.builtin_outputs --record

The fingerprint keeps every number exactly (figures, tile table, per-tile values, GeoJSON
classes and measurements, per-object records, image pixels as a hash), and of polygon vertex
lists only the areas (QuPath's "Area px^2"): tracing may place vertices differently and still
be the same region.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

DEMO_MODEL = Path(__file__).resolve().parents[1] / "predictions" / "demo_model"
GOLDEN = Path(__file__).resolve().parent / "golden" / "builtin_outputs.json"
SLIDES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"

# (pipeline name, slide key, params); slide keys: see slide_paths.
CASES = [
    ("tissue-area", "cmu", {}),
    ("tissue-area", "tissue_fragments", {}),
    ("ihc-dab", "hdab_10", {"tile_size": 256}),
    ("ihc-dab", "he_e1", {"tile_size": 256}),
    ("nuclei-density", "nuclei_touching", {"tile_size": 256}),
    ("nuclei-density", "hdab_10", {}),
    ("tissue-classifier", "cmu", {}),
]


def slide_paths(folder: Path) -> dict[str, Path]:
    """The real CMU slide and synthetic slides (deterministic) written into `folder`."""
    from predictions.imaging.synthetic import make_case, write_slide

    paths = {"cmu": SLIDES_DIR / "cmu-1-small-region.svs"}
    for name in ("tissue_fragments", "hdab_10", "he_e1", "nuclei_touching"):
        case = make_case(name)
        paths[name] = write_slide(folder / f"{name}.tiff", case.rgb, case.mpp)
    return paths


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _rounded(value):
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def feature_summary(feature: dict) -> dict:
    props = feature["properties"]
    return {"id": feature["id"], "type": feature["geometry"]["type"], "objectType": props["objectType"],
            "name": props.get("name"), "classification": props.get("classification"),
            "measurements": _rounded(props.get("measurements", {}))}


def fingerprint(result, tile_csv: str, overlay: dict, collection: dict, nuclei: list[dict]) -> dict:
    """result: runner.SlideResult; the rest as the platform builds them from it."""
    images = {}
    for name, image in sorted(result.outcome.images.items()):
        array = np.asarray(image)
        images[name] = {"size": list(image.size), "mode": image.mode, "pixels": _hash(array.tobytes()),
                        "legend": _rounded(json.loads(json.dumps(result.outcome.legends.get(name, {}))))}
    detections = result.detections
    overlay = dict(overlay)
    outline = overlay.pop("tissue_outline")
    return {
        "metrics": _rounded(result.outcome.metrics),
        "plan_tiles": len(result.prepared.plan.tiles),
        "images": images,
        "tile_csv": _hash(tile_csv.encode()),
        "tile_csv_header": tile_csv.splitlines()[0] if tile_csv else "",
        "overlay": _rounded(json.loads(json.dumps(overlay))),
        "overlay_outline_rings": len(outline),
        "geojson": [feature_summary(f) for f in collection["features"]],
        "geojson_members": sorted(collection),
        "detections": None if detections is None else {"count": int(len(detections)),
                                                        "records": _hash(np.ascontiguousarray(detections).tobytes())},
        "nuclei_features": {"count": len(nuclei), "summary": _hash(json.dumps(
            [feature_summary(f) for f in nuclei], sort_keys=True).encode())},
    }


def _demo_model():
    from predictions.pipelines import ModelSpec

    meta = json.loads((DEMO_MODEL / "model.json").read_text())
    path = DEMO_MODEL / meta["file"]
    return ModelSpec(str(path), hashlib.sha256(path.read_bytes()).hexdigest(), meta["tile_size"], meta["mpp"],
                     tuple(meta["mean"]), tuple(meta["std"]), tuple(meta["class_names"]))


def outputs(folder: Path) -> dict:
    """The fingerprint of every case, built by the platform's own functions."""
    from predictions import engine, geojson
    from predictions.pipelines import installed
    from predictions.pipelines.runner import run_slide

    codes = {name: code for (name, _), code in installed().items()}
    model = _demo_model()
    paths = slide_paths(folder)
    found = {}
    for name, slide, params in CASES:
        code = codes[name]
        spec = model if code.model_name else None
        result = run_slide(code, paths[slide], params, spec)
        plan, mask = result.prepared.plan, result.prepared.mask
        size = (result.width, result.height)
        collection = geojson.feature_collection(code, plan, result.rows, mask, *size, key="run-1",
                                                class_names=spec.class_names if spec else ())
        nuclei = (geojson.nucleus_features(result.detections, key="run-1", mpp=plan.mpp, width=size[0],
                                           height=size[1], path_class=code.detection_class)
                  if result.detections is not None else [])
        found[f"{name}/{slide}"] = fingerprint(
            result, engine.tile_table_csv(code, plan, result.rows),
            geojson.overlay_data(code, plan, result.rows, mask, *size), collection, nuclei)
    return found


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    import django

    django.setup()
    with tempfile.TemporaryDirectory() as tmp:
        recorded = outputs(Path(tmp))
    GOLDEN.write_text(json.dumps(recorded, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"recorded {len(recorded)} cases in {GOLDEN}")
