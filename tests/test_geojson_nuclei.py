"""The GeoJSON export of a run with per-nucleus records: one QuPath detection per nucleus (a
12-gon of the nucleus's area around its centroid, its area in px² and µm²), streamed from the
memory-mapped file so the web process's memory does not grow with the nuclei."""

import io
import json
import tracemalloc
import uuid

import numpy as np
import pytest
from django.http import StreamingHttpResponse
from django.urls import reverse

from predictions import detections, geojson, regions
from tests.nuclei_runs import HEIGHT, WIDTH, finished_run, random_nuclei
from tests.test_geojson import check_qupath_structure, polygon_area


def nuclei_of(fc):
    return [f for f in fc["features"] if f["properties"].get("classification", {}).get("name") == "Nucleus"]


def streamed(response, sink=None):
    assert isinstance(response, StreamingHttpResponse) and response.streaming
    sink = sink or io.BytesIO()
    for chunk in response.streaming_content:
        sink.write(chunk)
    return sink


# -- plain functions ----------------------------------------------------------------------------
def test_a_nucleus_is_a_12_gon_of_its_area_with_qupath_properties():
    records = np.array([[100, 200, 50.0], [3, 2950, 120.0]], np.float32)
    features = geojson.nucleus_features(records, key="run-7", mpp=0.5, start=40, width=WIDTH, height=HEIGHT)
    first = features[0]
    assert first["id"] == str(uuid.uuid5(geojson._NAMESPACE, "run-7/nucleus/40"))
    assert features[1]["id"] == str(uuid.uuid5(geojson._NAMESPACE, "run-7/nucleus/41"))
    assert first["properties"] == {"objectType": "detection", "classification": {"name": "Nucleus", "color": [60, 110, 230]},
                                   "measurements": {"Area px^2": 50.0, "Area µm^2": 12.5}}
    ring = first["geometry"]["coordinates"][0]
    assert first["geometry"]["type"] == "Polygon" and len(ring) == 13 and ring[0] == ring[-1]
    assert polygon_area(first["geometry"]["coordinates"]) == pytest.approx(50, abs=0.2)   # the nucleus's own area
    assert np.mean(ring[:-1], axis=0) == pytest.approx([100, 200], abs=0.05)
    # Near the edge the polygon stays on the slide.
    assert all(0 <= x <= WIDTH and 0 <= y <= HEIGHT for x, y in features[1]["geometry"]["coordinates"][0])
    # Without a pixel size: no µm².
    (plain,) = geojson.nucleus_features(records[:1], key="run-7", mpp=None)
    assert plain["properties"]["measurements"] == {"Area px^2": 50.0}


def test_chunks_join_to_the_same_json_as_one_dump():
    collection = {"type": "FeatureCollection",
                  "features": [{"type": "Feature", "id": str(i), "geometry": None, "properties": {"name": "é"}}
                               for i in range(2500)],
                  "histoia": {"run": 1, "units": "px"}}
    expected = json.dumps(collection, separators=(",", ":"), ensure_ascii=False)
    assert "".join(geojson.collection_chunks(collection)) == expected
    records = random_nuclei(25)
    blocks = list(geojson.nucleus_feature_blocks(records, key="k", mpp=0.25, block=10))
    assert len(blocks) == 3
    joined = json.loads("".join(geojson.collection_chunks(collection, blocks)))
    assert joined["features"][:2500] == collection["features"] and joined["histoia"] == collection["histoia"]
    assert joined["features"][2500:] == geojson.nucleus_features(records, key="k", mpp=0.25)
    empty = {"type": "FeatureCollection", "features": []}
    assert json.loads("".join(geojson.collection_chunks(empty, [[], ""]))) == empty
    assert json.loads("".join(geojson.collection_chunks(empty, blocks)))["features"][0]["id"] == \
        str(uuid.uuid5(geojson._NAMESPACE, "k/nucleus/0"))


# -- the download ---------------------------------------------------------------------------------
def test_export_has_one_detection_per_nucleus(alice_client, bob_client, experiment):
    nuclei = random_nuclei(2000, seed=5)
    run = finished_run(experiment, nuclei)
    url = reverse("predictions:run_regions", args=[run.pk])
    response = alice_client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "application/geo+json"
    assert "attachment" in response["Content-Disposition"]
    fc = json.loads(streamed(response).getvalue())
    check_qupath_structure(fc, WIDTH, HEIGHT)
    found = nuclei_of(fc)
    assert len(found) == 2000 and fc["histoia"]["objects"] == 2000
    expected = detections.sort_records(nuclei)   # the file's order: by y, then x
    areas = [f["properties"]["measurements"]["Area px^2"] for f in found]
    np.testing.assert_allclose(areas, expected[:, 2], atol=0.051)
    um2 = [f["properties"]["measurements"]["Area µm^2"] for f in found]
    np.testing.assert_allclose(um2, expected[:, 2] * 0.25, atol=0.006)
    centres = np.array([np.mean(f["geometry"]["coordinates"][0][:-1], axis=0) for f in found])
    inner = (expected[:, 0] > 20) & (expected[:, 0] < WIDTH - 20) & (expected[:, 1] > 20) & (expected[:, 1] < HEIGHT - 20)
    np.testing.assert_allclose(centres[inner], expected[inner, :2], atol=0.01)
    # Before them, exactly what the run's export holds without nuclei: the tiles.
    plain = regions.regions_collection(run)
    assert fc["features"][:len(plain["features"])] == plain["features"] and len(plain["features"]) == 5
    # The same document again: ids are stable.
    again = json.loads(streamed(alice_client.get(url)).getvalue())
    assert [f["id"] for f in again["features"]] == [f["id"] for f in fc["features"]]
    # detections=0: regions only, neither tiles nor nuclei, in one piece as before.
    regions_only = alice_client.get(url + "?detections=0")
    assert not regions_only.streaming
    assert [f for f in json.loads(regions_only.content)["features"] if f["properties"]["objectType"] == "detection"] == []
    assert bob_client.get(url).status_code == 404


def test_run_without_detections_answers_as_before(alice_client, experiment):
    run = finished_run(experiment)
    response = alice_client.get(reverse("predictions:run_regions", args=[run.pk]))
    assert not response.streaming
    expected = json.dumps(regions.regions_collection(run), separators=(",", ":"), ensure_ascii=False)
    assert response.content.decode() == expected and "objects" not in json.loads(expected)["histoia"]


def test_api_view_streams_the_same_document(alice, experiment):
    from rest_framework.test import APIRequestFactory, force_authenticate

    from predictions.regions_api import RunRegionsView

    run = finished_run(experiment, random_nuclei(300, seed=6))
    request = APIRequestFactory().get("/api/v1/x/regions.geojson", HTTP_ACCEPT="application/geo+json")
    force_authenticate(request, user=alice)
    response = RunRegionsView.as_view()(request, pk=run.prediction_id, run_id=run.pk)
    assert response.status_code == 200
    fc = json.loads(streamed(response).getvalue())
    assert len(nuclei_of(fc)) == 300


def test_200000_nuclei_are_streamed(alice_client, experiment, tmp_path):
    run = finished_run(experiment, random_nuclei(200_000, seed=7), batches=4)
    assert run.detections.size == 128 + 12 * 200_000   # 12 bytes a nucleus
    response = alice_client.get(reverse("predictions:run_regions", args=[run.pk]))
    target = tmp_path / "regions.geojson"
    largest = 0
    with open(target, "wb") as sink:
        assert isinstance(response, StreamingHttpResponse)
        for chunk in response.streaming_content:
            largest = max(largest, len(chunk))
            sink.write(chunk)
    size = target.stat().st_size
    # Written a block of nuclei at a time, never the whole document at once.
    assert size > 60_000_000 and largest < 8_000_000
    with open(target, "rb") as fh:
        fc = json.load(fh)
    found = nuclei_of(fc)
    assert len(found) == 200_000 == fc["histoia"]["objects"]
    assert len({f["id"] for f in found}) == 200_000


def test_memory_follows_the_block_not_the_nuclei_count(alice_client, experiment, monkeypatch):
    """tracemalloc (slow) on a smaller run cut in small blocks: the peak is a few blocks' worth."""
    monkeypatch.setattr(geojson, "NUCLEUS_BLOCK", 1000)
    run = finished_run(experiment, random_nuclei(40_000, seed=8))
    url = reverse("predictions:run_regions", args=[run.pk])
    size = 0
    tracemalloc.start()
    try:
        for chunk in streamed_chunks(alice_client.get(url)):
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 15_000_000
    assert peak < size / 4, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB document"


def streamed_chunks(response):
    assert isinstance(response, StreamingHttpResponse)
    yield from response.streaming_content
