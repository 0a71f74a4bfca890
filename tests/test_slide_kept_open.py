"""A worker keeps the slide of its last tile batch open, and reopens it when the file changed."""

import os

import pytest

from experiments.slide_files import SlideFileError
from predictions import engine
from tests.conftest import BROKEN_SLIDE, CMU_SLIDE


@pytest.fixture(autouse=True)
def nothing_kept():
    engine.forget_kept()
    yield
    engine.forget_kept()


def test_consecutive_batches_share_one_open_slide_until_the_file_changes(slide_copy):
    path = slide_copy(CMU_SLIDE, "case.svs")
    with engine.kept_open(str(path)) as first:
        region = first.read_region((0, 0), 0, (64, 64))
    with engine.kept_open(str(path)) as second:
        assert second is first
        assert (second.read_region((0, 0), 0, (64, 64)) == region).all()
    os.utime(path, ns=(1, 1))  # the stored file was replaced
    with engine.kept_open(str(path)) as third:
        assert third is not first and third.info.width == 2220


def test_a_failed_read_forgets_the_slide_and_a_missing_file_says_so(slide_copy, tmp_path):
    path = slide_copy(CMU_SLIDE, "case.svs")
    with pytest.raises(RuntimeError):
        with engine.kept_open(str(path)) as reader:
            raise RuntimeError("the batch failed")
    with engine.kept_open(str(path)) as again:
        assert again is not reader
    with pytest.raises(SlideFileError, match="missing from storage"):
        with engine.kept_open(str(tmp_path / "gone.svs")):
            pass
    with pytest.raises(SlideFileError):
        with engine.kept_open(str(BROKEN_SLIDE)):
            pass


def prepared_run(experiment, pipelines, django_capture_on_commit_callbacks):
    """A running ihc-dab prediction of the CMU slide, its slide prepared."""
    from predictions.models import Status
    from tests.factories import PredictionFactory, SlideRunFactory

    prediction = PredictionFactory(experiment=experiment, pipeline=pipelines["ihc-dab"], status=Status.RUNNING,
                                   params=pipelines["ihc-dab"].code.parse_params({"tile_size": 256}))
    run = SlideRunFactory(prediction=prediction, status=Status.RUNNING)
    with django_capture_on_commit_callbacks(execute=False):
        engine.prepare(run.pk)
    run.refresh_from_db()
    return run


def batch_reads_plan(run, index, django_capture_on_commit_callbacks) -> bool:
    """Run one tile batch in-process; whether it read the run's plan from the database."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=False):
        engine.run_batch(run.pk, index, "cpu", "test")
    return any('"predictions_sliderun"."plan"' in q["sql"] for q in queries)


def test_the_batches_of_a_slide_decode_its_plan_once_and_a_new_run_its_own(
        db, alice, lab_a, pipelines, django_capture_on_commit_callbacks):
    """The plan lists every tile (megabytes on a large slide); it is written once, by prepare."""
    from predictions.models import BatchResult, SlideRun
    from predictions.pipelines import Plan
    from tests.factories import ExperimentFactory

    experiment = ExperimentFactory(lab=lab_a, created_by=alice)
    first = prepared_run(experiment, pipelines, django_capture_on_commit_callbacks)
    assert first.batch_count >= 2
    assert batch_reads_plan(first, 0, django_capture_on_commit_callbacks)
    assert not batch_reads_plan(first, 1, django_capture_on_commit_callbacks)

    second = prepared_run(experiment, pipelines, django_capture_on_commit_callbacks)
    SlideRun.objects.filter(pk=second.pk).update(plan={**second.plan, "batch_size": 3})
    assert batch_reads_plan(second, 0, django_capture_on_commit_callbacks)
    # Each batch holds the tiles of its own run's plan.
    assert BatchResult.objects.get(run=second, index=0).tiles == 3
    assert BatchResult.objects.get(run=first, index=1).tiles == len(Plan.from_json(first.plan).batches()[1])
