"""The example lab package (examples/hematoxylin-area), installed beside Histo-IA as a lab would
install its own, run end to end through the platform: migrate gives it a row, real workers run
it, and every place a user reads a result (the prediction page, the figures CSV, the tile table,
the GeoJSON for QuPath, the viewer's overlay data) shows what the package declares, with the very
figures the package gives when run alone on the same file (runner.run_slide): the platform adds
nothing and loses nothing.

The package is installed by `make install-test` (pip install --no-deps -e examples/hematoxylin-area).
"""

import csv
import io
import json

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse

from predictions import engine
from predictions.imaging import synthetic
from predictions.models import Pipeline, Status
from predictions.pipelines import installed
from predictions.pipelines.runner import run_slide
from tests.conftest import CMU_SLIDE, wait_final

NAME, VERSION = "hematoxylin-area", "1.0"
INSTALL = "make install-test, or .venv/bin/pip install --no-deps -e examples/hematoxylin-area"
PARAMS = {"tile_size": 256}
RICH, POOR = "Hematoxylin-rich", "Hematoxylin-poor"


@pytest.fixture
def example():
    code = installed().get((NAME, VERSION))
    assert code is not None, f"the example pipeline package is not installed ({INSTALL})"
    return code


def he_slide(folder):
    """The validation set's H&E tile he_e1 (60 nuclei, a shifted eosin) laid on glass, 0.5 µm/px."""
    case = synthetic.make_case("he_e1")
    h, w = case.rgb.shape[:2]
    margin = 256
    empty = np.zeros((h + 2 * margin, w + 2 * margin), np.float32)
    canvas = synthetic.beer_lambert({"glass": empty}, {"glass": np.ones(3)}, rng=np.random.default_rng(1))
    canvas[margin:margin + h, margin:margin + w] = case.rgb
    return synthetic.write_slide(folder / "he-nuclei.tiff", canvas, case.mpp)


def content(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.django_db
def test_migrate_gives_the_installed_package_a_pipeline_row(example, admin_client):
    # As on a server where the package was just installed: no row yet, then `manage.py migrate`.
    Pipeline.objects.filter(name=NAME).delete()
    call_command("migrate", verbosity=0)
    row = Pipeline.objects.get(name=NAME, version=VERSION)
    assert row.installed and row.enabled
    assert (row.title, row.description) == (example.title, example.description)
    assert [p["name"] for p in row.param_schema] == [p.name for p in example.params]
    assert {step["queue"] for step in row.steps} == {"cpu"}
    admin_page = admin_client.get(reverse("admin:predictions_pipeline_changelist")).content.decode()
    assert "Hematoxylin area" in admin_page


@pytest.mark.worker
def test_the_example_runs_through_the_platform_as_it_runs_alone(example, workers, pipelines, make_slide,
                                                                alice_client, tmp_path):
    assert NAME in pipelines, f"no row for {NAME} ({INSTALL})"
    slides = [make_slide(he_slide(tmp_path)), make_slide(CMU_SLIDE)]
    prediction = wait_final(engine.submit(slides[0].experiment, pipelines[NAME], slides, PARAMS), timeout=300)
    assert prediction.status == Status.SUCCEEDED, prediction.error
    runs = list(prediction.runs.select_related("slide").order_by("slide__original_name", "pk"))
    assert [r.slide.original_name for r in runs] == ["cmu-1-small-region.svs", "he-nuclei.tiff"]

    # The same figures and tile rows as the package alone on the same (stored) file.
    for run in runs:
        alone = run_slide(example, run.slide.file.path, PARAMS)
        assert run.metrics == alone.outcome.metrics, run.slide.original_name
        assert [row for batch in run.batches.order_by("index") for row in batch.rows] == alone.rows
    cmu, synthetic_run = runs
    assert synthetic_run.metrics["tissue_area_px"] == pytest.approx(1024 * 1024, rel=0.01)
    assert 0 < cmu.metrics["hematoxylin_area_fraction"] < 1

    # The prediction page: every figure under its declared label, the overlay's legend and the
    # distribution of the tile value.
    page = alice_client.get(reverse("predictions:detail", args=[prediction.pk])).content.decode()
    for name in cmu.metrics:
        assert example.figure(name).label in page and name in page, name
    assert example.tile_value.plot_title in page
    assert "Hematoxylin-positive fraction of tissue overlay" in page    # the heatmap, by its legend

    # The figures CSV: one row per slide, the figures as columns, the values the runs hold.
    response = alice_client.get(reverse("predictions:figures_csv", args=[prediction.pk]))
    table = list(csv.DictReader(io.StringIO(content(response).decode())))
    assert [line["slide"] for line in table] == [r.slide.original_name for r in runs]
    for line, run in zip(table, runs):
        for name in ("hematoxylin_area_fraction", "hematoxylin_area_mm2", "hematoxylin_area_px",
                     "tissue_area_mm2", "tiles_analysed"):
            assert float(line[name]) == pytest.approx(run.metrics[name], rel=1e-9), name

    for run in runs:
        # The tile table: one line per analysed tile, with the package's own columns.
        response = alice_client.get(reverse("predictions:run_file", args=[run.pk, "tiles.csv"]))
        assert response.status_code == 200
        tiles = list(csv.DictReader(io.StringIO(content(response).decode())))
        assert len(tiles) == run.metrics["tiles_analysed"] > 1
        assert {"tissue_px", "hematoxylin_px", "hematoxylin_area_fraction"} <= set(tiles[0])
        # A tile whose tissue-mask share holds no tissue pixel has no fraction ("").
        fractions = [float(t["hematoxylin_area_fraction"]) if t["hematoxylin_area_fraction"] else None
                     for t in tiles]

        # The overlay image and the viewer's tile data: the package's tile value first.
        image = alice_client.get(reverse("predictions:run_file", args=[run.pk, "hematoxylin.png"]))
        assert image.status_code == 200 and image["Content-Type"] == "image/png"
        overlay = alice_client.get(reverse("predictions:run_overlay", args=[run.pk])).json()
        assert overlay["primary"] == {"column": example.tile_value.column, "label": example.tile_value.label}
        assert overlay["columns"][0] == "hematoxylin_area_fraction"
        assert [tile[2] for tile in overlay["tiles"]] == fractions

        # QuPath: each tile classified by the cut-off (0.5 unless the user sets ?cutoff=), and
        # the Hematoxylin-rich tiles merged into one region.
        url = reverse("predictions:run_regions", args=[run.pk])
        for query, cutoff in (("", 0.5), ("?cutoff=0.02", 0.02)):
            collection = json.loads(content(alice_client.get(url + query)))
            detections = [f for f in collection["features"] if f["properties"]["objectType"] == "detection"]
            classes = [f["properties"].get("classification", {}).get("name") for f in detections]
            assert classes == [None if f is None else RICH if f >= cutoff else POOR for f in fractions]
            regions = [f for f in collection["features"] if f["properties"]["objectType"] == "annotation"]
            if RICH in classes:
                (region,) = regions
                assert region["properties"]["name"] == f"Hematoxylin-rich tiles (≥ {cutoff:g} of tissue)"
                assert region["properties"]["classification"]["name"] == RICH
                assert region["properties"]["measurements"]["Tiles"] == classes.count(RICH)
            else:
                assert regions == []
        assert alice_client.get(url + "?cutoff=2").status_code == 400
    # The real slide has tiles on both sides of the default cut-off.
    cmu_classes = [f["properties"].get("classification", {}).get("name") for f in json.loads(content(
        alice_client.get(reverse("predictions:run_regions", args=[cmu.pk]))))["features"]
        if f["properties"]["objectType"] == "detection"]
    assert {RICH, POOR} <= set(cmu_classes)
