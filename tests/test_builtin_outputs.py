"""The built-in pipelines' figures, overlays and exports do not change when the code is reshaped.

Each built-in pipeline runs (in this process, runner.run_slide) on the real CMU slide or on
synthetic slides of known content; its figures, result images, tile table, viewer data, GeoJSON
and per-object records are compared with what was recorded (tests/builtin_outputs.py says how,
and how to record again after a deliberate change of method).
"""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from predictions import engine, geojson
from predictions.pipelines import ModelSpec, installed
from predictions.pipelines.runner import run_slide
from tests import builtin_outputs as bo

DEMO = Path(__file__).resolve().parents[1] / "predictions" / "demo_model"


def _demo_model() -> ModelSpec:
    meta = json.loads((DEMO / "model.json").read_text())
    path = DEMO / meta["file"]
    return ModelSpec(str(path), hashlib.sha256(path.read_bytes()).hexdigest(), meta["tile_size"], meta["mpp"],
                     tuple(meta["mean"]), tuple(meta["std"]), tuple(meta["class_names"]))


def outputs(folder: Path) -> dict:
    """The fingerprint of every case, built by the platform's own functions."""
    codes = {name: code for (name, _), code in installed().items()}
    model = _demo_model()
    paths = bo.slide_paths(folder)
    found = {}
    for name, slide, params in bo.CASES:
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
        found[f"{name}/{slide}"] = bo.fingerprint(
            result, engine.tile_table_csv(code, plan, result.rows),
            geojson.overlay_data(code, plan, result.rows, mask, *size), collection, nuclei)
    return found


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    return outputs(tmp_path_factory.mktemp("builtin-slides"))


@pytest.mark.parametrize("case", [f"{name}/{slide}" for name, slide, _ in bo.CASES])
def test_builtin_outputs_are_unchanged(measured, case):
    expected = json.loads(bo.GOLDEN.read_text())[case]
    got = json.loads(json.dumps(measured[case], ensure_ascii=False, sort_keys=True))
    for part in expected:   # one part at a time, so a failure names what changed
        assert got[part] == expected[part], f"{case}: {part} changed"


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    import django

    django.setup()
    with tempfile.TemporaryDirectory() as tmp:
        recorded = outputs(Path(tmp))
    bo.GOLDEN.write_text(json.dumps(recorded, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"recorded {len(recorded)} cases in {bo.GOLDEN}")
