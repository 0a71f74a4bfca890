"""The dashboard: the queue in run order with positions and ETAs, and a bounded query count."""

import re
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from experiments.models import Slide
from predictions import engine, monitoring, queueing
from predictions.models import BatchResult, Prediction, SlideRun, Status


@pytest.fixture
def ready_slides(experiment):
    return [Slide.objects.create(experiment=experiment, original_name=f"case-{i}.svs", status=Slide.Status.READY,
                                 sha256=f"{i:064d}", width=2000, height=2000) for i in range(3)]


@pytest.fixture
def pipelines(db):
    # Not the suite's transactional fixture: here submitted predictions must stay queued (the
    # test transaction never commits, so nothing is sent to the workers).
    from predictions.catalogue import sync_pipelines
    from predictions.models import Pipeline

    sync_pipelines()
    return {p.name: p for p in Pipeline.objects.all()}


@pytest.fixture
def no_broker_calls():
    # The dashboard reads workers and queue depths through a short cache; fill it so these page
    # tests measure the page's own queries, not a broadcast to workers.
    cache.set(monitoring.WORKERS_CACHE_KEY, {"at": time.time(), "workers": []}, 60)
    cache.set(monitoring.DEPTHS_CACHE_KEY, {"cpu": 0, "gpu": 0}, 60)
    yield
    cache.clear()


def queue(pipelines, slides, priority, django_capture_on_commit_callbacks, **kw):
    # Submitted without sending anything: these predictions stay queued.
    with django_capture_on_commit_callbacks(execute=False):
        return engine.submit(slides[0].experiment, pipelines["ihc-dab"], slides, priority=priority, **kw)


def test_queue_lists_urgent_first_then_oldest_with_positions_and_etas(
        alice_client, pipelines, ready_slides, no_broker_calls, django_capture_on_commit_callbacks):
    normal_1 = queue(pipelines, ready_slides, "normal", django_capture_on_commit_callbacks)
    normal_2 = queue(pipelines, ready_slides[:1], "normal", django_capture_on_commit_callbacks)
    urgent = queue(pipelines, ready_slides[:2], "urgent", django_capture_on_commit_callbacks)
    page = alice_client.get(reverse("predictions:dashboard")).content.decode()
    rows = re.findall(r'data-prediction="(\d+)" data-position="(\d+)"', page)
    assert rows == [(str(urgent.pk), "1"), (str(normal_1.pk), "2"), (str(normal_2.pk), "3")]
    etas = [int(x.replace(",", "")) for x in re.findall(r'<td class="num">([\d,]+) s', page)]
    assert len(etas) == 3 and etas == sorted(etas) and etas[0] > 0  # each waits for those ahead

    # Measured history replaces the cautious default: the ETA is updated from real throughput.
    before = dict(zip([r[0] for r in rows], etas))
    done = queue(pipelines, ready_slides[:1], "normal", django_capture_on_commit_callbacks)
    run = done.runs.get()
    now = timezone.now()
    BatchResult.objects.create(run=run, index=0, rows=[], tiles=1000, queue="cpu", worker="cpu@test",
                               started_at=now - timedelta(seconds=1), finished_at=now, seconds=1.0)
    SlideRun.objects.filter(pk=run.pk).update(status=Status.SUCCEEDED)
    Prediction.objects.filter(pk=done.pk).update(status=Status.SUCCEEDED, finished_at=now)
    cache.delete("histoia:throughput:ihc-dab")  # measured throughput is cached for 30 s
    queueing.forget_recent_plan()   # and the plan for up to PLAN_SECONDS (5 s): as if that long later
    page = alice_client.get(reverse("predictions:dashboard_live")).content.decode()
    after = dict(re.findall(r'data-prediction="(\d+)" data-position="\d+"><td>\d+</td>.*?<td class="num">([\d,]+) s', page, re.S))
    assert set(after) == set(before)
    assert all(int(after[k].replace(",", "")) != before[k] for k in before)


def test_dashboard_query_count_does_not_grow_with_running_predictions(
        alice_client, pipelines, ready_slides, no_broker_calls, django_capture_on_commit_callbacks):
    def running(n):
        for _ in range(n):
            p = queue(pipelines, ready_slides, "normal", django_capture_on_commit_callbacks)
            Prediction.objects.filter(pk=p.pk).update(status=Status.RUNNING, started_at=timezone.now())
            p.runs.update(status=Status.RUNNING, total_units=40, done_units=10)

    def count():
        queueing.forget_recent_plan()   # each request plans the queue afresh, the costlier case
        with CaptureQueriesContext(connection) as ctx:
            assert alice_client.get(reverse("predictions:dashboard_live")).status_code == 200
        return len(ctx.captured_queries)

    running(1)
    count()  # warms the 30 s throughput cache, shared by every request
    one = count()
    running(9)
    ten = count()
    assert ten == one, f"{one} queries with 1 running prediction, {ten} with 10"


def test_a_refresh_places_new_work_into_the_recent_plan_without_planning_the_queue_again(
        alice_client, pipelines, ready_slides, no_broker_calls, django_capture_on_commit_callbacks):
    """Every open dashboard refreshes every few seconds: the queue is planned once per
    PLAN_SECONDS per process, and what was submitted since is placed into that plan, at its
    true position, at once."""
    first = [queue(pipelines, ready_slides[:1], "normal", django_capture_on_commit_callbacks) for _ in range(3)]

    def live():
        with CaptureQueriesContext(connection) as ctx:
            page = alice_client.get(reverse("predictions:dashboard_live")).content.decode()
        return re.findall(r'data-prediction="(\d+)" data-position="(\d+)"', page), len(ctx.captured_queries)

    queueing.forget_recent_plan()
    rows, planned = live()
    assert rows == [(str(p.pk), str(i)) for i, p in enumerate(first, 1)]
    urgent = queue(pipelines, ready_slides[:1], "urgent", django_capture_on_commit_callbacks)
    rows, placed = live()
    assert rows == [(str(urgent.pk), "1")] + [(str(p.pk), str(i)) for i, p in enumerate(first, 2)]
    assert placed < planned
    queueing.forget_recent_plan()
    assert live()[0] == rows   # the same as a plan made afresh


def test_the_running_predictions_progress_moves_the_etas_without_planning_the_queue_again(
        alice_client, pipelines, ready_slides, no_broker_calls, django_capture_on_commit_callbacks, monkeypatch):
    """Every PLAN_SECONDS a refresh reads the running predictions' progress again: the ETAs
    behind them come closer as the work is done, as a plan made afresh says, and the queue is
    not planned in full for it (that costs 320 ms with 10,000 waiting)."""
    first, *waiting = [queue(pipelines, ready_slides[:1], "normal", django_capture_on_commit_callbacks)
                       for _ in range(3)]
    Prediction.objects.filter(pk=first.pk).update(status=Status.RUNNING, started_at=timezone.now())
    first.runs.update(status=Status.RUNNING, total_units=402, done_units=1, batch_count=8)

    def etas():
        page = alice_client.get(reverse("predictions:dashboard_live")).content.decode()
        found = re.findall(r'data-prediction="(\d+)" data-position="\d+"><td>\d+</td>.*?<td class="num">([\d,]+) s',
                           page, re.S)
        return {int(pk): int(eta.replace(",", "")) for pk, eta in found}

    queueing.forget_recent_plan()
    before = etas()
    assert set(before) == {p.pk for p in waiting}
    first.runs.update(done_units=301)                       # three quarters of its tiles done since
    monkeypatch.setattr(queueing, "PLAN_SECONDS", 0.0)      # as if the plan were 5 s old
    monkeypatch.setattr(queueing, "_plan", lambda: pytest.fail("the queue was planned in full"))
    after = etas()
    assert all(after[pk] < before[pk] for pk in before), (before, after)
    monkeypatch.undo()
    fresh = {e["pk"]: e["eta_seconds"] for e in queueing.waiting(load=False)}   # a plan made now
    assert after == {pk: fresh[pk] for pk in after}


def test_predictions_starting_and_ending_move_the_plan_without_planning_the_queue_again(
        pipelines, ready_slides, django_capture_on_commit_callbacks, monkeypatch):
    """A prediction that starts goes ahead of the waiting ones, one that ends leaves the plan:
    each refresh reads the running and the new predictions only, and says what a plan made
    afresh says. A waiting prediction cancelled is the one change that needs a full plan."""
    full_plans = []
    plan = queueing._plan
    monkeypatch.setattr(queueing, "_plan", lambda: full_plans.append(1) or plan())

    def shown():
        """(what the recent plan shows, what a plan made now shows, whether a full plan was made)."""
        before = len(full_plans)
        recent = [(e["pk"], e["position"], e["eta_seconds"]) for e in queueing.waiting(load=False, recent=True)]
        planned = len(full_plans) > before
        fresh = [(e["pk"], e["position"], e["eta_seconds"]) for e in queueing.waiting(load=False)]
        return recent, fresh, planned

    first, second, third = [queue(pipelines, ready_slides[:1], "normal", django_capture_on_commit_callbacks)
                            for _ in range(3)]
    assert shown()[2]   # the first plan
    Prediction.objects.filter(pk=first.pk).update(status=Status.RUNNING, started_at=timezone.now())
    first.runs.update(status=Status.RUNNING, total_units=402, done_units=101, batch_count=8)
    recent, fresh, planned = shown()
    assert recent == fresh and not planned
    assert [(pk, position) for pk, position, _ in recent] == [(first.pk, 0), (second.pk, 1), (third.pk, 2)]

    Prediction.objects.filter(pk=first.pk).update(status=Status.SUCCEEDED, finished_at=timezone.now())
    first.runs.update(status=Status.SUCCEEDED)
    fourth = queue(pipelines, ready_slides[:1], "normal", django_capture_on_commit_callbacks)
    recent, fresh, planned = shown()
    assert recent == fresh and not planned
    assert [pk for pk, _, _ in recent] == [second.pk, third.pk, fourth.pk]

    Prediction.objects.filter(pk=third.pk).update(status=Status.CANCELLED, finished_at=timezone.now())
    recent, fresh, planned = shown()
    assert recent == fresh and planned
    assert [(pk, position) for pk, position, _ in recent] == [(second.pk, 1), (fourth.pk, 2)]


def test_a_submit_committed_after_a_later_one_is_placed_without_planning_the_queue_again(
        pipelines, ready_slides, django_capture_on_commit_callbacks, monkeypatch):
    """Ids are taken at insert and rows seen at commit: with many people submitting, the plan
    sees a prediction whose id is below the newest it knows."""
    full_plans = []
    plan = queueing._plan
    monkeypatch.setattr(queueing, "_plan", lambda: full_plans.append(1) or plan())
    late, later = [queue(pipelines, ready_slides[:1], "normal", django_capture_on_commit_callbacks)
                   for _ in range(2)]
    Prediction.objects.filter(pk=late.pk).update(status="committing")   # not seen yet
    assert [e["pk"] for e in queueing.waiting(load=False, recent=True)] == [later.pk]
    Prediction.objects.filter(pk=late.pk).update(status=Status.QUEUED)    # its commit, seen now
    recent = [(e["pk"], e["position"], e["eta_seconds"]) for e in queueing.waiting(load=False, recent=True)]
    assert len(full_plans) == 1
    assert recent == [(e["pk"], e["position"], e["eta_seconds"]) for e in queueing.waiting(load=False)]
    assert [pk for pk, _, _ in recent] == [late.pk, later.pk]


def test_another_lab_sees_none_of_it(bob_client, pipelines, ready_slides, no_broker_calls,
                                     django_capture_on_commit_callbacks):
    p = queue(pipelines, ready_slides, "urgent", django_capture_on_commit_callbacks)
    page = bob_client.get(reverse("predictions:dashboard")).content.decode()
    assert f'data-prediction="{p.pk}"' not in page and "Nothing is waiting" in page


def test_a_long_queue_shows_the_next_ones_and_how_many_more(
        alice_client, pipelines, ready_slides, no_broker_calls, django_capture_on_commit_callbacks, monkeypatch):
    from predictions import views

    monkeypatch.setattr(views, "QUEUE_SHOWN", 2)
    first, second, third = (queue(pipelines, ready_slides[:1], "normal", django_capture_on_commit_callbacks)
                            for _ in range(3))
    page = alice_client.get(reverse("predictions:dashboard")).content.decode()
    rows = re.findall(r'data-prediction="(\d+)" data-position="(\d+)"', page)
    assert rows == [(str(first.pk), "1"), (str(second.pk), "2")]
    assert 'data-queued-more="1"' in page and "1 more waiting" in page
    assert "?status=queued" in page


@pytest.mark.parametrize("page", ["dashboard", "prediction"])
def test_polled_pages_do_not_read_the_tile_plans(page, alice_client, pipelines, ready_slides, no_broker_calls,
                                                 django_capture_on_commit_callbacks):
    """A run's plan lists every tile of its slide (megabytes on a large slide): a page polled every
    few seconds must not read it (reading it took the dashboard from 12 to 240 ms with six runs)."""
    p = queue(pipelines, ready_slides, "normal", django_capture_on_commit_callbacks)
    Prediction.objects.filter(pk=p.pk).update(status=Status.RUNNING, started_at=timezone.now())
    p.runs.update(status=Status.RUNNING, total_units=40, done_units=10, plan={"tiles": [[0, 0]] * 1000})
    url = reverse("predictions:dashboard_live") if page == "dashboard" else reverse("predictions:progress", args=[p.pk])
    with CaptureQueriesContext(connection) as ctx:
        response = alice_client.get(url)
    assert response.status_code == 200 and "10/40" in response.content.decode()
    run_queries = [q["sql"] for q in ctx.captured_queries if 'FROM "predictions_sliderun"' in q["sql"]]
    assert run_queries and not any('"predictions_sliderun"."plan"' in sql for sql in run_queries)


def test_the_prediction_page_says_where_it_stands_and_the_time_left(
        alice_client, pipelines, ready_slides, no_broker_calls, django_capture_on_commit_callbacks):
    first = queue(pipelines, ready_slides, "normal", django_capture_on_commit_callbacks)
    second = queue(pipelines, ready_slides[:1], "normal", django_capture_on_commit_callbacks)

    def eta_line(prediction):
        page = alice_client.get(reverse("predictions:progress", args=[prediction.pk])).content.decode()
        return " ".join(re.search(r"<div [^>]*data-eta>(.*?)</div>", page, re.S).group(1).split())

    assert re.match(r"position 2 in the cpu queue · about [\d,]+ s left \(estimate, no history yet\)",
                    eta_line(second))
    Prediction.objects.filter(pk=first.pk).update(status=Status.RUNNING, started_at=timezone.now())
    first.runs.update(status=Status.RUNNING, total_units=40, done_units=10)
    assert re.match(r"about [\d,]+ s left", eta_line(first))
    assert re.match(r"position 1 in the cpu queue · about [\d,]+ s left", eta_line(second))
