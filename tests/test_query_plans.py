"""The queries that run on every submit, step and page refresh read the ends of indexes, so that
they cost the same after a year of work as on the first day.

Each test loads some history and asks PostgreSQL (production's database) for the plans of the
very queries the code runs, with full scans and sorts priced out: on a small table the planner
rightly prefers them, so what is checked is that an index can serve the query in order, as the
planner chooses to on a big one. With 100,000 predictions and a million batches
(bench/submit_cost.py --history; the plans below were seen there), the aggregates and sorts over
every row that these replaced cost 30-36 ms per submit and 0.6 s per measure of a pipeline's rate.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from predictions import dispatch, queueing
from predictions.models import BatchResult, Prediction, SlideRun, Status
from tests.factories import SlideFactory

pytestmark = [pytest.mark.django_db,
              pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's plans (production's database)")]


def plans_of(call):
    """(what call returned, {the SQL of each query it ran: its plan})."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute("SET LOCAL enable_seqscan = off")   # until the test's transaction ends
        cursor.execute("SET LOCAL enable_sort = off")
    with CaptureQueriesContext(connection) as captured:
        result = call()
    plans = {}
    with connection.cursor() as cursor:
        for query in captured.captured_queries:
            cursor.execute("EXPLAIN " + query["sql"])
            plans[query["sql"]] = "\n".join(row[0] for row in cursor.fetchall())
    return result, plans


def history(experiment, pipeline, count):
    now = timezone.now()
    return Prediction.objects.bulk_create([
        Prediction(experiment=experiment, pipeline=pipeline, params={}, status=Status.SUCCEEDED,
                   started_at=now - timedelta(minutes=count - i), finished_at=now - timedelta(minutes=count - i),
                   turn=i + 1) for i in range(count)])


def test_a_submits_turn_is_read_from_two_index_ends(pipeline_rows, experiment):
    history(experiment, pipeline_rows["ihc-dab"], 300)
    turn, plans = plans_of(lambda: dispatch.new_turn(experiment.lab_id))
    assert turn == 301
    [plan] = plans.values()   # one query
    # The highest turn served from its index's end, and one index probe per experiment of the
    # lab (the lab's few experiments are then sorted).
    assert "prediction_served_turn_idx" in plan and "prediction_experiment_turn_idx" in plan, plan
    assert "Seq Scan on predictions_prediction" not in plan and "Sort Key: u0.turn" not in plan, plan


def test_a_predictions_task_rows_are_found_by_their_prefix_whatever_the_databases_collation(pipeline_rows,
                                                                                        experiment):
    """A prediction's task rows (its page, cancel) are found by their ids' prefix, LIKE 'p42-%'."""
    from django_celery_results.models import TaskResult

    from predictions.task_records import task_rows_of

    prediction = history(experiment, pipeline_rows["ihc-dab"], 1)[0]
    TaskResult.objects.bulk_create([TaskResult(task_id=f"p{prediction.pk + i}-r{i}-b{b}", status="SUCCESS")
                                    for i in range(50) for b in range(20)])
    with connection.cursor() as cursor:
        # As in a database created with en_US.utf8 (the postgres image's default), where a plain
        # index on the id does not serve LIKE 'p42-%'.
        cursor.execute('ALTER TABLE django_celery_results_taskresult ALTER COLUMN task_id TYPE varchar(255) '
                       'COLLATE "en-US-x-icu"')
    ids, plans = plans_of(lambda: list(task_rows_of(prediction).values_list("task_id", flat=True)))
    assert len(ids) == 20 and all(i.startswith(f"p{prediction.pk}-") for i in ids)
    # Django gives the unique task_id a second index with varchar_pattern_ops on PostgreSQL
    # (..._like), which serves the prefix as a range whatever the collation.
    [plan] = plans.values()
    assert "Seq Scan" not in plan and "_like" in plan and "~>=~" in plan, plan


def test_a_pipelines_rate_is_measured_from_its_newest_batches_and_runs(pipeline_rows, experiment):
    predictions = history(experiment, pipeline_rows["ihc-dab"], 300)
    slide = SlideFactory(experiment=experiment, source=None, status="ready", width=8000, height=6000)
    runs = SlideRun.objects.bulk_create([
        SlideRun(prediction=p, slide=slide, status=Status.SUCCEEDED, total_units=12, finished_at=p.finished_at,
                 timings={"prepare_s": 2.0, "aggregate_s": 1.0}) for p in predictions])
    BatchResult.objects.bulk_create([
        BatchResult(run=run, index=i, rows=[], tiles=100, queue="cpu", worker="w", seconds=2.0,
                    started_at=run.finished_at - timedelta(seconds=10 - 2 * i),
                    finished_at=run.finished_at - timedelta(seconds=8 - 2 * i)) for run in runs for i in range(5)])
    rate, plans = plans_of(lambda: queueing.throughput("ihc-dab", fresh=True))
    assert rate.tiles_per_second == pytest.approx(50.0) and rate.batches_measured == queueing.HISTORY < 300 * 5
    batches, slide_runs = (next(plan for sql, plan in plans.items() if sql.startswith(f'SELECT "{table}"'))
                           for table in ("predictions_batchresult", "predictions_sliderun"))
    assert "batchresult_finished_idx" in batches and "Sort" not in batches, batches
    assert "sliderun_succeeded_idx" in slide_runs and "Sort" not in slide_runs, slide_runs


def test_the_dashboards_latest_ended_predictions_are_read_from_an_index_end(pipeline_rows, experiment, alice_client):
    history(experiment, pipeline_rows["ihc-dab"], 300)
    page, plans = plans_of(lambda: alice_client.get("/predictions/dashboard/live/"))
    assert page.status_code == 200
    latest = [plan for sql, plan in plans.items() if 'ORDER BY "predictions_prediction"."finished_at" DESC' in sql]
    assert len(latest) == 1
    assert "prediction_ended_idx" in latest[0] and "Sort" not in latest[0], latest[0]
    shown = page.context["recent"]
    assert [p.turn for p in shown] == list(range(300, 290, -1))   # the ten that ended last
