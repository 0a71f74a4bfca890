"""hematoxylin-area on synthetic slides of known content, run as the platform's queues would run it
(runner.run_slide: prepare, every batch, aggregate, with JSON between the steps).

The truth comes from the generator (predictions/imaging/synthetic.py), never from the code under
test: the hematoxylin concentration maps drawn here, or the nuclei the generator lists. No
database, no broker: a lab runs these with plain pytest in its Histo-IA environment.
"""

import math

import numpy as np
import pytest

from hematoxylin_area.pipeline import POOR, RICH, HematoxylinArea
from predictions.imaging import synthetic
from predictions.pipelines.base import ParamError, Prepared
from predictions.pipelines.runner import run_slide

MPP = synthetic.DEFAULT_MPP
PIPELINE = HematoxylinArea()


def glass(height: int, width: int, seed: int) -> np.ndarray:
    """An empty slide: the generator's glass white with its sensor noise."""
    empty = np.zeros((height, width), np.float32)
    return synthetic.beer_lambert({"glass": empty}, {"glass": np.ones(3)}, rng=np.random.default_rng(seed))


def on_glass(rgb: np.ndarray, margin: int = 256) -> np.ndarray:
    """A synthetic tile laid on glass, as tissue lies on a slide (so the slide has glass white to
    estimate and tissue edges to detect)."""
    h, w = rgb.shape[:2]
    canvas = glass(h + 2 * margin, w + 2 * margin, seed=1)
    canvas[margin:margin + h, margin:margin + w] = rgb
    return canvas


# Hematoxylin of the graded slide, in OD. Pale patches (cytoplasm-like counterstain) and dark
# objects (nuclei-like) are drawn at levels at least 20 % away from the thresholds tested (0.2 and
# 0.55): the Macenko vectors can overstate hematoxylin by that much where eosin lies under it
# (see README, "Limits"), and this test is about what is counted, not about the vectors.
BACKGROUND_MAX = 0.08
PALE = (0.28, 0.38)
DARK = (0.7, 1.1)
THRESHOLDS = (0.2, 0.55)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """An H&E-like section (an ellipse of tissue on glass, 1536 x 2048 px at 0.5 µm/px): eosin
    everywhere, a faint hematoxylin background, pale and dark hematoxylin objects; the eosin and
    hematoxylin vectors are the generator's variants, not the references. Returns the file, the
    same image without a pixel size, the tissue mask and the hematoxylin map that were drawn."""
    rng = np.random.default_rng(2024)
    h, w = 1536, 2048
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((xx - w / 2) / (w / 2 - 200)) ** 2 + ((yy - h / 2) / (h / 2 - 160)) ** 2 <= 1
    field = lambda scale: synthetic.smooth_field((h, w), scale, rng)  # noqa: E731 - values in [0, 1]
    eosin = np.where(tissue, 0.15 + 0.3 * field(160), 0)
    dark = field(24) > 0.7
    pale = (field(40) > 0.65) & ~dark
    hematoxylin = BACKGROUND_MAX * field(120)
    hematoxylin = np.where(dark, DARK[0] + (DARK[1] - DARK[0]) * field(12), hematoxylin)
    hematoxylin = np.where(pale, PALE[0] + (PALE[1] - PALE[0]) * field(12), hematoxylin)
    hematoxylin = np.where(tissue, hematoxylin, 0)
    rgb = synthetic.beer_lambert(
        {"eosin": eosin, "hematoxylin": hematoxylin},
        {"eosin": synthetic.EOSIN_VARIANTS[1], "hematoxylin": synthetic.STAIN_VECTORS["hematoxylin_variant"]},
        rng=rng)
    folder = tmp_path_factory.mktemp("graded")
    return {"path": synthetic.write_slide(folder / "graded.tiff", rgb, MPP),
            "path_no_mpp": synthetic.write_slide(folder / "graded-no-mpp.tiff", rgb, None),
            "tissue": tissue, "hematoxylin": hematoxylin}


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_the_area_above_the_threshold_is_the_area_drawn_above_it(graded, threshold):
    metrics = run_slide(PIPELINE, graded["path"], {"threshold_od": threshold}).outcome.metrics
    tissue, drawn = graded["tissue"], graded["hematoxylin"]
    above = int(np.count_nonzero(drawn[tissue] >= threshold))
    assert metrics["hematoxylin_area_fraction"] == pytest.approx(above / tissue.sum(), abs=0.002)
    assert metrics["hematoxylin_area_mm2"] == pytest.approx(above * MPP ** 2 / 1e6, rel=0.01)
    assert metrics["tissue_area_mm2"] == pytest.approx(tissue.sum() * MPP ** 2 / 1e6, rel=0.01)
    assert metrics["mpp_missing"] is False and metrics["stain_estimate"] == "estimated"
    # The figures agree with each other.
    assert metrics["hematoxylin_area_mm2"] == pytest.approx(
        metrics["hematoxylin_area_fraction"] * metrics["tissue_area_mm2"], rel=1e-4)


def test_figures_do_not_depend_on_the_tiling(graded):
    coarse = run_slide(PIPELINE, graded["path"], {"tile_size": 512}).outcome.metrics
    fine = run_slide(PIPELINE, graded["path"], {"tile_size": 256}).outcome.metrics
    assert fine["tiles_analysed"] > coarse["tiles_analysed"]
    for name in ("hematoxylin_area_fraction", "hematoxylin_area_mm2", "hematoxylin_area_px",
                 "tissue_area_px"):
        assert fine[name] == coarse[name], name


def test_a_slide_without_pixel_size_gets_pixels_and_no_made_up_mm2(graded):
    with_mpp = run_slide(PIPELINE, graded["path"]).outcome.metrics
    without = run_slide(PIPELINE, graded["path_no_mpp"]).outcome.metrics
    assert without["mpp_missing"] is True
    assert without["hematoxylin_area_mm2"] is None and without["tissue_area_mm2"] is None
    # Analysed at full resolution, as the slide with 0.5 µm/px is by default: the same pixels.
    assert without["hematoxylin_area_px"] == pytest.approx(with_mpp["hematoxylin_area_px"], rel=0.002)
    assert without["hematoxylin_area_fraction"] == pytest.approx(with_mpp["hematoxylin_area_fraction"],
                                                                 abs=0.001)


def _perimeter(a: float, b: float) -> float:
    """Ellipse perimeter (Ramanujan's approximation, well under 0.1 % off at these aspects)."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


@pytest.mark.parametrize("name", ["he_e1", "nuclei_dense"])
def test_on_the_validation_he_tiles_the_area_is_the_nuclei(tmp_path, name):
    """The project's synthetic H&E tiles (nuclei_dense with the bluer hematoxylin variant), laid
    on glass. The generator draws each nucleus (concentration 0.5-1.1 OD, chromatin x 0.85-1.15)
    with a one-pixel soft edge: coverage clip(0.5 - d, 0, 1) at distance d px outside the ellipse,
    on a hematoxylin background of at most 0.05 OD. So at the default 0.2 OD every pixel inside a
    nucleus counts (coverage >= 0.5 gives at least 0.21 OD), and no pixel 0.5 px or more outside
    one does: the area lies between the nuclei's own area and that of the nuclei grown by half a
    pixel (their aspect is at most 1.6)."""
    case = synthetic.make_case(name)
    path = synthetic.write_slide(tmp_path / f"{name}.tiff", on_glass(case.rgb), case.mpp)
    metrics = run_slide(PIPELINE, path).outcome.metrics
    inside = grown = 0.0
    for nucleus in case.truth["nuclei"]:
        area = nucleus["area_um2"] / case.mpp ** 2
        a, b = math.sqrt(area * 1.6 / math.pi), math.sqrt(area / (1.6 * math.pi))
        inside += area
        grown += area + 0.5 * _perimeter(a, b) + math.pi * 0.25
    # 1 % either side: pixel centres sample each edge.
    assert 0.99 * inside <= metrics["hematoxylin_area_px"] <= 1.01 * grown
    assert metrics["tissue_area_px"] == pytest.approx(case.truth["tissue_area_px"], rel=0.01)


@pytest.mark.parametrize("variant", range(len(synthetic.EOSIN_VARIANTS)))
def test_eosin_alone_is_not_hematoxylin(tmp_path, variant):
    """Tissue stained with eosin only (each of the generator's eosins): nothing to find."""
    case = synthetic.make_case(f"eosin_only_e{variant}")
    path = synthetic.write_slide(tmp_path / "eosin.tiff", on_glass(case.rgb), case.mpp)
    metrics = run_slide(PIPELINE, path).outcome.metrics
    assert metrics["tissue_area_px"] == pytest.approx(case.truth["tissue_area_px"], rel=0.01)
    assert metrics["hematoxylin_area_fraction"] < 0.001


def test_empty_glass_has_no_figures_made_up(tmp_path):
    path = synthetic.write_slide(tmp_path / "glass.tiff", glass(1024, 1024, seed=3), MPP)
    metrics = run_slide(PIPELINE, path).outcome.metrics
    assert metrics["tiles_analysed"] == 0 and metrics["tissue_area_px"] == 0
    assert metrics["hematoxylin_area_fraction"] is None and metrics["hematoxylin_area_px"] == 0


def test_a_batch_delivered_twice_gives_the_same_rows(graded):
    """Idempotent: the rows of a tile do not depend on when, how often or in which batch it runs."""
    from experiments.slide_files import SlideReader

    result = run_slide(PIPELINE, graded["path"], {"tile_size": 256})
    prepared = Prepared(result.prepared.plan, result.prepared.mask)
    with SlideReader(graded["path"]) as reader:
        batch = range(0, len(prepared.plan.tiles))
        first = PIPELINE.process_tiles(reader, prepared, batch, result.params)
        again = PIPELINE.process_tiles(reader, prepared, batch, result.params)
        one_by_one = [row for i in batch for row in PIPELINE.process_tiles(reader, prepared, range(i, i + 1),
                                                                          result.params)]
    assert first == again == one_by_one == result.rows


def test_what_the_platform_shows_is_declared(graded):
    """Every figure has its declared label; the tile value, the overlay and its legend, and the
    QuPath classes follow the per-tile fractions."""
    assert HematoxylinArea.contract_problem(PIPELINE) is None
    result = run_slide(PIPELINE, graded["path"], {"tile_size": 256})
    outcome, plan = result.outcome, result.prepared.plan
    assert all(PIPELINE.figure(name) is not None for name in outcome.metrics), outcome.metrics
    records = PIPELINE.tile_records(plan, result.rows)
    fractions = [rec[PIPELINE.tile_value.column] for rec in records]
    assert len(records) == outcome.metrics["tiles_analysed"]
    for rec, fraction in zip(records, fractions):
        assert fraction == pytest.approx(rec["hematoxylin_px"] / rec["tissue_px"], abs=1e-6)
    # The overlay: one cell per tile of the grid, coloured where a tile was analysed.
    assert set(outcome.images) == set(outcome.legends) == {"hematoxylin"}
    overlay = np.asarray(outcome.images["hematoxylin"])
    assert overlay.shape[:2] == plan.grid_shape
    assert np.count_nonzero(overlay[..., 3]) == len(records)
    # QuPath: a tile is Hematoxylin-rich from the cut-off up, which the user may change.
    for cutoff in (None, "0.2", "0.3"):
        options = PIPELINE.parse_export_options({} if cutoff is None else {"cutoff": cutoff})
        classes = PIPELINE.tile_classes(records, options)
        assert classes.regions == (RICH,)
        expected = [RICH if f >= options["cutoff"] else POOR for f in fractions]
        assert classes.per_tile == expected
    assert {RICH, POOR} <= set(classes.per_tile)     # this slide has tiles on both sides of 0.3
    with pytest.raises(ParamError, match="cut-off"):
        PIPELINE.parse_export_options({"cutoff": "2"})
