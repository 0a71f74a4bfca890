"""Per-nucleus detections: the batch files and their merge (idempotent, as redelivered tasks and
a crashed aggregate need), the box query on the memory-mapped file, and the viewer's endpoint
(another lab's run is 404, a bad box 400, at most BOX_LIMIT objects)."""

import numpy as np
import pytest
from django.http import Http404
from django.urls import reverse

from predictions import detections, regions
from tests.nuclei_runs import finished_run, random_nuclei


# -- pure functions -----------------------------------------------------------------------------
def test_pop_from_rows_removes_the_key_and_concatenates():
    a = np.array([[1, 2, 30], [3, 4, 40]], np.float32)
    b = np.zeros((0, 3), np.float32)
    c = [[5, 6, 50]]
    rows = [{"nuclei": 2, "_detections": a}, {"nuclei": 0, "_detections": b}, {"nuclei": 1}, {"_detections": c}]
    array = detections.pop_from_rows(rows)
    assert all("_detections" not in row for row in rows)
    assert array.dtype == np.float32 and array.shape == (3, 3) and array.flags.c_contiguous
    assert array.tolist() == [[1, 2, 30], [3, 4, 40], [5, 6, 50]]
    assert detections.pop_from_rows([{"nuclei": 1}, {}]) is None
    empty = detections.pop_from_rows([{"_detections": np.zeros((0, 3), np.float32)}])
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    with pytest.raises(ValueError):
        detections.pop_from_rows([{"_detections": np.zeros((4, 2))}])
    # Non-finite records are dropped, never stored.
    assert detections.pop_from_rows([{"_detections": [[1, np.nan, 3], [1, 2, 3]]}]).tolist() == [[1, 2, 3]]


def test_sort_and_box_query():
    records = detections.sort_records(np.array([[5, 5, 1], [1, 9, 2], [2, 5, 3], [9, 0, 4], [5, 5, 5]], np.float32))
    assert records[:, :2].tolist() == [[9, 0], [2, 5], [5, 5], [5, 5], [1, 9]]
    assert records[2:4, 2].tolist() == [1, 5]   # stable among equal centroids
    inside = detections.in_box(records, 2, 5, 9, 9, limit=10)
    assert inside.tolist() == [[2, 5, 3], [5, 5, 1], [5, 5, 5]]   # [x0, x1) x [y0, y1)
    assert detections.in_box(records, 0, 0, 10, 10, limit=0).shape == (0, 3)
    assert detections.in_box(records, 3, 3, 3, 8, limit=10).shape == (0, 3)   # empty box
    assert detections.in_box(detections.empty(), 0, 0, 10, 10, limit=10).shape == (0, 3)


def test_box_query_truncates_evenly_and_reads_in_slabs(monkeypatch):
    monkeypatch.setattr(detections, "SCAN_ROWS", 97)   # several slabs, both passes
    records = detections.sort_records(random_nuclei(20_000, seed=3))
    x0, y0, x1, y1 = 500, 400, 2500, 2200
    expected = records[(records[:, 0] >= x0) & (records[:, 0] < x1) & (records[:, 1] >= y0) & (records[:, 1] < y1)]
    found, total = detections.box_query(records, x0, y0, x1, y1, limit=10**6)
    assert total == len(expected) > 1000
    np.testing.assert_array_equal(found, expected)
    few, total = detections.box_query(records, x0, y0, x1, y1, limit=100)
    assert total == len(expected) and len(few) == 100
    np.testing.assert_array_equal(few, expected[(np.arange(100) * len(expected)) // 100])
    # Spread over the whole box, not only its top rows.
    assert few[:, 1].min() < y0 + 100 and few[:, 1].max() > y1 - 100
    np.testing.assert_array_equal(detections.in_box(records, x0, y0, x1, y1, 100), few)   # deterministic


def test_equivalent_radius():
    np.testing.assert_allclose(detections.equivalent_radius([np.pi * 25, 0, -3]), [5, 0, 0])


# -- files ---------------------------------------------------------------------------------------
def test_save_merge_load_round_trip(experiment):
    run = finished_run(experiment)
    storage = run.tile_table.storage
    nuclei = random_nuclei(1000, seed=1)
    parts = np.array_split(nuclei, 3)
    for index, part in enumerate(parts):
        name = detections.save_batch(run, index, part)
        assert name == f"results/lab-{experiment.lab_id}/prediction-{run.prediction_id}/slide-{run.slide_id}/detections/batch-{index:05d}.npy"
        assert storage.size(name) == 128 + 12 * len(part)   # the .npy header, then 12 bytes a nucleus
    # A redelivered batch overwrites its own file (same name, same content).
    assert detections.save_batch(run, 1, parts[1]) == detections.batch_name(run, 1)
    name = detections.merge(run, 3)
    assert name == detections.merged_name(run) and name.endswith("/detections.npy")
    assert not any(storage.exists(detections.batch_name(run, i)) for i in range(3))
    run.detections = name
    run.save()
    loaded = detections.load(run)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.float32 and loaded.shape == (1000, 3)
    np.testing.assert_array_equal(loaded, detections.sort_records(nuclei))
    assert np.all(np.diff(loaded[:, 1]) >= 0)
    # Merge again (aggregate redelivered after a crash): the merged file stands.
    assert detections.merge(run, 3) == name
    np.testing.assert_array_equal(detections.load(run), loaded)


def test_merge_after_a_crash_between_write_and_delete(experiment):
    run = finished_run(experiment)
    storage = run.tile_table.storage
    nuclei = random_nuclei(300, seed=2)
    for index, part in enumerate(np.array_split(nuclei, 3)):
        detections.save_batch(run, index, part)
    name = detections.merge(run, 3)
    # A batch file written again (a duplicate delivery) after the merge: it is a leftover copy.
    detections.save_batch(run, 2, np.array_split(nuclei, 3)[2])
    assert detections.merge(run, 3) == name
    assert not storage.exists(detections.batch_name(run, 2))
    run.detections = name
    assert len(detections.load(run)) == 300


def test_empty_and_missing_batches(experiment):
    run = finished_run(experiment)
    assert detections.merge(run, 4) == ""   # no batch file: no detections file
    assert detections.load(run).shape == (0, 3)
    detections.save_batch(run, 0, np.zeros((0, 3), np.float32))
    detections.save_batch(run, 2, np.array([[1, 2, 3]], np.float32))   # batches 1 and 3 kept none
    run.detections = detections.merge(run, 4)
    assert run.detections.name.endswith("detections.npy")
    assert detections.load(run).tolist() == [[1, 2, 3]]
    other = finished_run(experiment, name="other.svs")
    detections.save_batch(other, 0, np.zeros((0, 3), np.float32))
    other.detections = detections.merge(other, 1)
    assert detections.load(other).shape == (0, 3)   # an empty file reads back (even memory-mapped)


# -- the viewer's endpoint -------------------------------------------------------------------------
def box_url(run, **box):
    query = "&".join(f"{k}={v}" for k, v in box.items())
    return reverse("predictions:run_detections", args=[run.pk]) + ("?" + query if query else "")


def test_endpoint_answers_the_objects_in_the_box(alice_client, experiment):
    nuclei = np.array([[100.4, 200.6, np.pi * 36], [150, 250, np.pi * 4], [1000, 220, 50], [120, 900, 50]], np.float32)
    run = finished_run(experiment, nuclei, batches=2)
    response = alice_client.get(box_url(run, x0=0, y0=0, x1=500, y1=500))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    data = response.json()
    assert data == {"objects": [[100, 201, 6], [150, 250, 2]], "total": 2, "truncated": False}
    assert alice_client.get(box_url(run, x0=0, y0=0, x1=2000, y1=2000)).json()["total"] == 4
    assert alice_client.get(box_url(run, x0=3000, y0=0, x1=4000, y1=100)).json()["objects"] == []
    # The overlay data says the viewer may ask.
    overlay = alice_client.get(reverse("predictions:run_overlay", args=[run.pk])).json()
    assert overlay["has_detections"] is True and overlay["detections_url"] == box_url(run)


def test_endpoint_truncates_at_the_limit(alice_client, experiment, monkeypatch):
    run = finished_run(experiment, random_nuclei(6000, seed=4))
    data = alice_client.get(box_url(run, x0=0, y0=0, x1=4000, y1=3000)).json()
    assert data["truncated"] is True and data["total"] == 6000 and len(data["objects"]) == regions.BOX_LIMIT == 5000
    monkeypatch.setattr(regions, "BOX_LIMIT", 10)
    data = alice_client.get(box_url(run, x0=0, y0=0, x1=4000, y1=3000)).json()
    assert data["truncated"] is True and len(data["objects"]) == 10
    data = alice_client.get(box_url(run, x0=0, y0=0, x1=40, y1=30)).json()
    assert data["truncated"] is False and len(data["objects"]) == data["total"] < 10


@pytest.mark.parametrize("query", [{}, {"x0": 0, "y0": 0, "x1": 10}, {"x0": "a", "y0": 0, "x1": 10, "y1": 10},
                                   {"x0": 0, "y0": 0, "x1": "nan", "y1": 10}, {"x0": 0, "y0": 0, "x1": "inf", "y1": 10},
                                   {"x0": 10, "y0": 0, "x1": 5, "y1": 10}, {"x0": 0, "y0": 10, "x1": 5, "y1": 10}])
def test_endpoint_rejects_a_bad_box(alice_client, experiment, query):
    run = finished_run(experiment, random_nuclei(10))
    response = alice_client.get(box_url(run, **query))
    assert response.status_code == 400
    assert "error" in response.json()


def test_endpoint_is_404_for_another_lab_and_unfinished_runs(alice_client, bob_client, experiment):
    from predictions.models import Status

    run = finished_run(experiment, random_nuclei(10))
    url = box_url(run, x0=0, y0=0, x1=4000, y1=3000)
    assert alice_client.get(url).status_code == 200
    assert bob_client.get(url).status_code == 404
    assert bob_client.get(box_url(run)).status_code == 404   # 404 before any check of the box
    run.status = Status.RUNNING
    run.save()
    assert alice_client.get(url).status_code == 404


def test_run_without_detections(alice_client, experiment):
    run = finished_run(experiment)
    assert alice_client.get(box_url(run, x0=0, y0=0, x1=10, y1=10)).json() == {"objects": [], "total": 0, "truncated": False}
    overlay = alice_client.get(reverse("predictions:run_overlay", args=[run.pk])).json()
    assert overlay["has_detections"] is False and "detections_url" not in overlay


def test_shapes_of_a_result_whose_pipeline_version_is_gone_are_a_404_that_says_so(alice_client, experiment):
    run = finished_run(experiment, random_nuclei(4))
    url = reverse("predictions:run_overlay", args=[run.pk])
    assert alice_client.get(url).status_code == 200
    pipeline = run.prediction.pipeline
    type(pipeline).objects.filter(pk=pipeline.pk).update(installed=False)
    assert alice_client.get(url).status_code == 404
    with pytest.raises(Http404, match="no longer installed"):
        regions.finished_run(run.prediction.triggered_by or experiment.lab.members.first(), run.pk)
