"""The built-in pipelines' figures, overlays and exports do not change when the code is reshaped.

Each built-in pipeline runs (in this process, runner.run_slide) on the real CMU slide or on
synthetic slides of known content; its figures, result images, tile table, viewer data, GeoJSON
and per-object records are compared with what was recorded (tests/builtin_outputs.py says how,
and how to record again after a deliberate change of method).
"""

import json

import pytest

from tests import builtin_outputs as bo


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    return bo.outputs(tmp_path_factory.mktemp("builtin-slides"))


@pytest.mark.parametrize("case", [f"{name}/{slide}" for name, slide, _ in bo.CASES])
def test_builtin_outputs_are_unchanged(measured, case):
    expected = json.loads(bo.GOLDEN.read_text())[case]
    got = json.loads(json.dumps(measured[case], ensure_ascii=False, sort_keys=True))
    for part in expected:   # one part at a time, so a failure names what changed
        assert got[part] == expected[part], f"{case}: {part} changed"
