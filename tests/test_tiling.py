"""A tile reads the same whatever the tiling: the same slide cut into other tiles gives the same
figures, and past an image's edge is glass, never black.

The pipelines run in-process here (their steps are plain Python); the queues are tested elsewhere.
"""

import numpy as np
import pytest
from PIL import Image

from experiments.slide_files import SlideReader
from predictions.imaging import synthetic
from predictions.pipelines.ihc_dab import IhcDab
from predictions.pipelines.nuclei_density import NucleiDensity


def analyse(code, path, **params):
    reader = SlideReader(path)
    params = code.parse_params(params)
    prepared = code.prepare(reader, params, None, stain="")
    rows = []
    for batch in prepared.plan.batches():
        rows += code.process_tiles(reader, prepared, batch, params)
    found = [r.pop("_detections") for r in rows if "_detections" in r]
    return code.aggregate(prepared, rows, params, detections=np.concatenate(found) if found else None).metrics


@pytest.fixture(scope="module")
def nuclei_slide(tmp_path_factory):
    case = synthetic.make_case("nuclei_dense")
    return synthetic.write_slide(tmp_path_factory.mktemp("tiling") / "nuclei.tiff", case.rgb, case.mpp), case


@pytest.fixture(scope="module")
def ihc_png(tmp_path_factory):
    """A plain image (no pyramid, no pixel size) whose sides are not multiples of any tile size."""
    case = synthetic.make_case("hdab_50")
    path = tmp_path_factory.mktemp("tiling") / "ihc.png"
    Image.fromarray(case.rgb[:1000, :900]).save(path)
    return path


def test_nuclei_count_does_not_depend_on_the_tile_size(nuclei_slide):
    path, case = nuclei_slide
    small = analyse(NucleiDensity(), path, tile_size=256)
    large = analyse(NucleiDensity(), path, tile_size=512)
    assert small["nuclei_count"] == pytest.approx(large["nuclei_count"], abs=2)
    assert small["nuclei_count"] == pytest.approx(case.truth["nuclei_count"], rel=0.1)
    assert small["nuclei_per_mm2"] == pytest.approx(large["nuclei_per_mm2"], rel=0.02)
    assert small["nucleus_area_um2_median"] == pytest.approx(large["nucleus_area_um2_median"], rel=0.02)


def test_dab_fraction_does_not_depend_on_the_tile_size_of_a_plain_image(ihc_png):
    small = analyse(IhcDab(), ihc_png, tile_size=128)
    large = analyse(IhcDab(), ihc_png, tile_size=384)
    assert small["mpp_missing"] and small["tissue_area_mm2"] is None
    assert small["dab_positive_fraction"] == pytest.approx(large["dab_positive_fraction"], abs=0.005)
    assert small["tissue_area_px"] == pytest.approx(large["tissue_area_px"], rel=0.01)


def test_past_the_edge_of_a_plain_image_is_glass(ihc_png):
    reader = SlideReader(ihc_png)
    region = reader.read_region((850, 950), 0, (100, 100))
    assert (region[50:, :] == 255).all() and (region[:, 50:] == 255).all()
    inside = reader.read_region((0, 0), 0, (900, 1000))
    assert np.array_equal(inside, np.asarray(Image.open(ihc_png).convert("RGB")))
    before = reader.read_region((-10, -10), 0, (20, 20))
    assert (before[:10] == 255).all() and np.array_equal(before[10:, 10:], inside[:10, :10])


def test_real_slide_figures_do_not_depend_on_the_tile_size():
    """The shared H&E slide: its stain estimate, thresholds and nuclei are the same at any tiling."""
    from tests.conftest import CMU_SLIDE

    small = analyse(NucleiDensity(), CMU_SLIDE, tile_size=256)
    large = analyse(NucleiDensity(), CMU_SLIDE, tile_size=512)
    assert small["nuclei_count"] == pytest.approx(large["nuclei_count"], rel=0.02)
    assert small["nuclear_area_fraction"] == pytest.approx(large["nuclear_area_fraction"], rel=0.02)
    assert small["nucleus_area_um2_median"] == pytest.approx(large["nucleus_area_um2_median"], rel=0.02)
