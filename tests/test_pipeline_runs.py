"""The four built-in pipelines, run through real workers on real slides.

Each assertion is something a histologist would check, or an invariant that a wrong
computation would break.
"""

import pytest
from PIL import Image
from skimage import data

from experiments.slide_files import SlideReader
from predictions import engine
from predictions.models import BatchResult, Status
from tests.conftest import CMU_SLIDE, wait_final

pytestmark = pytest.mark.worker


def run(pipeline, slides, params=None, user=None):
    prediction = engine.submit(slides[0].experiment, pipeline, slides, params, user=user)
    return wait_final(prediction)


def test_tissue_area_on_the_cmu_slide(workers, pipelines, make_slide, alice):
    slide = make_slide(CMU_SLIDE)
    prediction = run(pipelines["tissue-area"], [slide], user=alice)
    assert prediction.status == Status.SUCCEEDED, prediction.error
    metrics = prediction.runs.get().metrics
    # The whole region is 2220 x 2967 px at 0.499 µm/px = 1.64 mm²; the tissue is a part of it.
    assert metrics["mpp_missing"] is False
    assert 0.3 < metrics["tissue_area_mm2"] < 1.2
    assert metrics["tissue_area_mm2"] == pytest.approx(metrics["tissue_area_px"] * 0.499 ** 2 / 1e6, rel=1e-3)
    # Agrees with an independent, simple threshold: pixels darker than near-white.
    with SlideReader(CMU_SLIDE) as reader:
        low, _ = reader.read_downsampled(16)
    simple = float((low.mean(axis=2) < 215).mean())
    assert metrics["tissue_fraction"] == pytest.approx(simple, abs=0.08)
    assert prediction.done_units == prediction.total_units


def _png_slide(tmp_path, array, name):
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return path


def test_ihc_dab_measures_ihc_and_flags_he_through_the_queues(workers, pipelines, make_slide, tmp_path):
    he = make_slide(CMU_SLIDE)
    ihc = make_slide(_png_slide(tmp_path, data.immunohistochemistry(), "ihc-colon.png"))
    assert ihc.mpp is None
    prediction = run(pipelines["ihc-dab"], [he, ihc], {"tile_size": 256})
    assert prediction.status == Status.SUCCEEDED, prediction.error
    runs = {r.slide.original_name: r for r in prediction.runs.select_related("slide")}
    he_m, ihc_m = runs["cmu-1-small-region.svs"].metrics, runs["ihc-colon.png"].metrics
    # H&E has no DAB: its second stain is recognised as eosin and no DAB figure is reported.
    assert he_m["stain_mismatch"] is True and he_m["stain_second"] == "eosin"
    assert he_m["dab_positive_fraction"] is None and he_m["h_score"] is None
    # The real IHC image: DAB found (its own vector, near the reference) and measured.
    assert ihc_m["stain_mismatch"] is False and ihc_m["stain_second"] == "dab"
    assert runs["ihc-colon.png"].stain_estimate["second_stain"] == "dab"
    assert ihc_m["dab_positive_fraction"] > 0.4
    assert 0 <= ihc_m["h_score"] <= 300
    assert ihc_m["dab_positive_fraction"] == pytest.approx(
        ihc_m["dab_weak_fraction"] + ihc_m["dab_moderate_fraction"] + ihc_m["dab_strong_fraction"], abs=1e-5)
    # A slide without a pixel size is flagged and gets no made-up mm².
    assert ihc_m["mpp_missing"] is True and ihc_m["tissue_area_mm2"] is None and ihc_m["tissue_area_px"] > 0


def test_nuclei_density_is_plausible_and_does_not_depend_on_the_tiling(workers, pipelines, make_slide):
    slide = make_slide(CMU_SLIDE)
    coarse = run(pipelines["nuclei-density"], [slide], {"tile_size": 512})
    fine = run(pipelines["nuclei-density"], [slide], {"tile_size": 256})
    assert coarse.status == fine.status == Status.SUCCEEDED
    a, b = coarse.runs.get().metrics, fine.runs.get().metrics
    assert a["nuclei_count"] > 500
    # Nuclei in H&E tissue: typically a few thousand per mm².
    assert 1000 < a["nuclei_per_mm2"] < 10000
    # Density is a property of the tissue, not of how it was cut into tiles.
    assert b["nuclei_per_mm2"] == pytest.approx(a["nuclei_per_mm2"], rel=0.02)
    # Every nucleus is kept (centroid, area) for the viewer and QuPath.
    assert coarse.runs.get().detections and 15 < a["nucleus_area_um2_median"] < 80
    assert fine.runs.get().total_units > coarse.runs.get().total_units


def test_tissue_classifier_runs_on_the_gpu_queue_one_task_at_a_time(workers, pipelines, make_slide, demo_model):
    slides = [make_slide(CMU_SLIDE, f"cmu-copy-{i}.svs") for i in range(3)]
    prediction = run(pipelines["tissue-classifier"], slides, {"min_tissue": 0.1})
    assert prediction.status == Status.SUCCEEDED, prediction.error
    assert prediction.model_sha256 == demo_model.sha256
    for slide_run in prediction.runs.all():
        fractions = {k: v for k, v in slide_run.metrics.items() if k.startswith("class_fraction_")}
        assert set(fractions) == {f"class_fraction_{c}" for c in demo_model.class_names}
        assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-4)
        assert fractions["class_fraction_background"] < 0.5  # tiles were chosen for their tissue
    batches = list(BatchResult.objects.filter(run__prediction=prediction).order_by("started_at"))
    assert len(batches) >= 3 and {b.queue for b in batches} == {"gpu"}
    assert {b.worker for b in batches} == {workers.gpu_name}
    for earlier, later in zip(batches, batches[1:]):
        assert earlier.finished_at <= later.started_at, "two gpu batches overlapped"
