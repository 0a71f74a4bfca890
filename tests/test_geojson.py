"""GeoJSON export of a finished slide run, as QuPath imports it: structure, coordinates inside the
slide, classes and values equal to the run's own tile rows, and nothing for another lab."""

import json

import numpy as np
import pytest
import shapely

from predictions.pipelines.ihc_dab import IhcDab
from django.urls import reverse
from PIL import Image
from skimage import data

from predictions import engine, geojson
from predictions.models import Status
from predictions.pipelines import Plan, get_pipeline
from tests.conftest import CMU_SLIDE, wait_final
from tests.test_geometry import polygon_area, ring_area


# -- features from a plan and rows (no workers) -----------------------------------------------
def test_ihc_features_from_a_plan_and_rows():
    code = get_pipeline("ihc-dab", IhcDab.version)
    plan = Plan(mpp=0.5, analysis_downsample=2.0, tile_size=100, mask_downsample=16.0, mask_shape=(13, 19),
                grid_shape=(2, 2), tiles=[(0, 0), (0, 1), (1, 1)], tile_tissue=[1.0, 0.5, 0.8])
    rows = [{"tissue_px": 100, "negative_px": 50, "weak_px": 30, "moderate_px": 10, "strong_px": 10},
            {"tissue_px": 100, "negative_px": 95, "weak_px": 5, "moderate_px": 0, "strong_px": 0},
            {"tissue_px": 0, "negative_px": 0, "weak_px": 0, "moderate_px": 0, "strong_px": 0}]
    fc = geojson.feature_collection(code, plan, rows, None, width=300, height=210, key="t", options={"threshold": 0.2})
    detections = [f for f in fc["features"] if f["properties"]["objectType"] == "detection"]
    annotations = [f for f in fc["features"] if f["properties"]["objectType"] == "annotation"]
    assert [f["properties"]["classification"]["name"] for f in detections] == ["Positive", "Negative", "Negative"]
    assert detections[0]["properties"]["measurements"]["dab_positive_fraction"] == 0.5
    # A tile with no tissue has no fraction: the measurement is left out, never NaN or null.
    assert "dab_positive_fraction" not in detections[2]["properties"]["measurements"]
    assert detections[2]["geometry"]["coordinates"] == [[[200, 200], [300, 200], [300, 210], [200, 210], [200, 200]]]
    (positive,) = annotations
    assert positive["properties"]["classification"] == {"name": "Positive", "color": [200, 50, 50]}
    assert positive["geometry"] == {"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [200, 200], [0, 200], [0, 0]]]}
    json.dumps(fc, allow_nan=False)


# -- real predictions through the workers -------------------------------------------------------
def check_qupath_structure(fc, width, height):
    """What QuPath's GeoJSON import needs, and every coordinate on the slide."""
    assert fc["type"] == "FeatureCollection" and isinstance(fc["features"], list)
    json.dumps(fc, allow_nan=False)   # strict JSON: no NaN anywhere
    ids = set()
    for feature in fc["features"]:
        assert feature["type"] == "Feature"
        ids.add(feature["id"])
        props = feature["properties"]
        assert props["objectType"] in ("annotation", "detection")
        if "classification" in props:
            cls = props["classification"]
            assert isinstance(cls["name"], str) and cls["name"]
            assert len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
        for name, value in props.get("measurements", {}).items():
            assert isinstance(name, str) and isinstance(value, (int, float)) and np.isfinite(value)
        geometry = feature["geometry"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        for polygon in polygons:
            for ring in polygon:
                assert len(ring) >= 4 and ring[0] == ring[-1]
                for x, y in ring:
                    assert 0 <= x <= width and 0 <= y <= height
            assert ring_area(polygon[0]) > 0 and all(ring_area(h) < 0 for h in polygon[1:])
            shape = shapely.Polygon(polygon[0], polygon[1:])
            assert shape.is_valid, shapely.is_valid_reason(shape)
    assert len(ids) == len(fc["features"])  # stable, distinct ids (UUIDs)


def body(response) -> bytes:
    """A response's bytes, streamed (a run with per-nucleus detections) or not."""
    return b"".join(response.streaming_content) if response.streaming else response.content


def is_nucleus(feature):
    return feature["properties"].get("classification", {}).get("name") == "Nucleus"


def tile_rows(run):
    return [row for batch in run.batches.order_by("index") for row in batch.rows]


@pytest.mark.worker
def test_geojson_of_each_pipeline_matches_its_run(workers, pipelines, demo_model, make_slide, alice_client,
                                                  bob_client, alice, bob, tmp_path):
    cmu = make_slide(CMU_SLIDE)
    ihc_path = tmp_path / "ihc-colon.png"
    Image.fromarray(data.immunohistochemistry()).save(ihc_path)
    ihc = make_slide(ihc_path)
    experiment = cmu.experiment
    submitted = {
        "tissue-area": engine.submit(experiment, pipelines["tissue-area"], [cmu]),
        "ihc-dab": engine.submit(experiment, pipelines["ihc-dab"], [ihc], {"tile_size": 64}),
        "nuclei-density": engine.submit(experiment, pipelines["nuclei-density"], [cmu], {"tile_size": 1024}),
        "tissue-classifier": engine.submit(experiment, pipelines["tissue-classifier"], [cmu]),
    }
    collections = {}
    for name, prediction in submitted.items():
        wait_final(prediction, timeout=300)
        assert prediction.status == Status.SUCCEEDED, (name, prediction.error)
        run = prediction.runs.select_related("slide").get()
        url = reverse("predictions:run_regions", args=[run.pk])
        response = alice_client.get(url)
        assert response.status_code == 200, name
        assert response["Content-Type"] == "application/geo+json"
        assert "attachment" in response["Content-Disposition"] and ".geojson" in response["Content-Disposition"]
        fc = json.loads(body(response))
        check_qupath_structure(fc, run.slide.width, run.slide.height)
        assert fc["histoia"]["run"] == run.pk and fc["histoia"]["pipeline"] == name
        collections[name] = (run, fc)
        # Another lab: the export does not exist, nor does the viewer's data.
        assert bob_client.get(url).status_code == 404
        assert bob_client.get(reverse("predictions:run_overlay", args=[run.pk])).status_code == 404

    # tissue-area: tissue regions whose area is the run's tissue area (the mask's contours).
    run, fc = collections["tissue-area"]
    regions = fc["features"]
    assert regions and all(f["properties"]["classification"]["name"] == "Tissue" for f in regions)
    area = sum(polygon_area(f["geometry"]["coordinates"]) for f in regions)
    assert area == pytest.approx(run.metrics["tissue_area_px"], rel=0.15)

    # ihc-dab: one detection per tile row, with that row's DAB-positive fraction; positive tiles
    # are those at or above the threshold, and the Positive region is exactly their union.
    run, fc = collections["ihc-dab"]
    rows = tile_rows(run)
    plan = Plan.from_json(run.plan)
    detections = [f for f in fc["features"] if f["properties"]["objectType"] == "detection"]
    assert len(detections) == len(rows) == len(plan.tiles) > 10
    n_positive = 0
    for feature, row, (r, c) in zip(detections, rows, plan.tiles):
        expected = (row["weak_px"] + row["moderate_px"] + row["strong_px"]) / row["tissue_px"] if row["tissue_px"] else None
        measured = feature["properties"]["measurements"].get("dab_positive_fraction")
        assert measured == pytest.approx(expected, abs=1e-6) if expected is not None else measured is None
        positive = expected is not None and expected >= 0.10  # the default Positive cut-off
        n_positive += positive
        assert feature["properties"]["classification"]["name"] == ("Positive" if positive else "Negative")
        x0, y0 = feature["geometry"]["coordinates"][0][0]
        assert (x0, y0) == (c * plan.tile_size_level0, r * plan.tile_size_level0)
    assert 0 < n_positive < len(rows)  # the IHC image has both
    (positive_region,) = [f for f in fc["features"] if f["properties"]["objectType"] == "annotation"]
    assert positive_region["properties"]["measurements"]["Tiles"] == n_positive
    # A stricter threshold (query parameter) gives fewer positive tiles.
    strict = json.loads(body(alice_client.get(reverse("predictions:run_regions", args=[run.pk]) + "?threshold=0.6")))
    strict_pos = [f for f in strict["features"] if f["properties"]["objectType"] == "detection"
                  and f["properties"]["classification"]["name"] == "Positive"]
    assert len(strict_pos) < n_positive
    assert alice_client.get(reverse("predictions:run_regions", args=[run.pk]) + "?threshold=2").status_code == 400

    # nuclei-density: the count of each tile, summing to the slide's nuclei count, and one Nucleus
    # detection per nucleus the run kept (its detections file), with its area.
    run, fc = collections["nuclei-density"]
    counts = [f["properties"]["measurements"]["nuclei"] for f in fc["features"] if not is_nucleus(f)]
    assert counts == [row["nuclei"] for row in tile_rows(run)]
    assert sum(counts) == run.metrics["nuclei_count"]
    from predictions import detections as detection_files

    nuclei = [f for f in fc["features"] if is_nucleus(f)]
    assert run.detections
    records = detection_files.load(run)
    assert len(nuclei) == len(records) == run.metrics["nuclei_count"] == fc["histoia"]["objects"] > 0
    assert [f["properties"]["measurements"]["Area px^2"] for f in nuclei] == \
        pytest.approx(records[:, 2].tolist(), abs=0.051)
    assert all(f["properties"]["objectType"] == "detection" for f in nuclei)
    # The viewer's box query finds them too.
    box = alice_client.get(reverse("predictions:run_detections", args=[run.pk]),
                           {"x0": 0, "y0": 0, "x1": run.slide.width, "y1": run.slide.height}).json()
    assert box["total"] == len(records)

    # tissue-classifier: each tile's class, and one region per class covering exactly its tiles.
    run, fc = collections["tissue-classifier"]
    rows = tile_rows(run)
    plan = Plan.from_json(run.plan)
    detections = [f for f in fc["features"] if f["properties"]["objectType"] == "detection"]
    assert [f["properties"]["classification"]["name"] for f in detections] == [r["class"] for r in rows]
    for feature, row in zip(detections, rows):
        for name in demo_model.class_names:
            assert feature["properties"]["measurements"][f"p_{name}"] == pytest.approx(row[f"p_{name}"])
    regions = {f["properties"]["classification"]["name"]: f for f in fc["features"]
               if f["properties"]["objectType"] == "annotation"}
    assert set(regions) == {r["class"] for r in rows}
    size0 = plan.tile_size_level0
    for name, feature in regions.items():
        tiles = [(r, c) for (r, c), row in zip(plan.tiles, rows) if row["class"] == name]
        assert feature["properties"]["measurements"]["Tiles"] == len(tiles)
        expected = sum((min((c + 1) * size0, run.slide.width) - c * size0) * (min((r + 1) * size0, run.slide.height) - r * size0)
                       for r, c in tiles)
        geometry = feature["geometry"]
        polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        assert sum(polygon_area(p) for p in polygons) == pytest.approx(expected)

    # The API view (predictions/regions_api.py) answers the same document, scoped the same way.
    from rest_framework.test import APIRequestFactory, force_authenticate

    from predictions.regions_api import RunRegionsView

    def api(user, prediction_pk, run_pk, accept="application/geo+json"):
        request = APIRequestFactory().get("/api/v1/x/regions.geojson", HTTP_ACCEPT=accept)
        force_authenticate(request, user=user)
        response = RunRegionsView.as_view()(request, pk=prediction_pk, run_id=run_pk)
        if hasattr(response, "render"):  # DRF's own answers (errors) render lazily
            response.render()
        return response.status_code, response.content

    status, content = api(alice, run.prediction_id, run.pk)
    assert status == 200 and json.loads(content)["features"] == fc["features"]
    assert api(bob, run.prediction_id, run.pk)[0] == 404
    assert api(alice, run.prediction_id + 1000, run.pk)[0] == 404
    assert api(alice, collections["ihc-dab"][0].prediction_id, run.pk)[0] == 404  # run of another prediction

    # The viewer's per-tile data carries the same values.
    overlay = alice_client.get(reverse("predictions:run_overlay", args=[run.pk])).json()
    assert overlay["tile_size"] == size0 and overlay["columns"][0] == "class"
    assert [t[2] for t in overlay["tiles"]] == [r["class"] for r in rows]
    assert overlay["tissue_outline"] and all(len(ring) >= 4 for ring in overlay["tissue_outline"])
