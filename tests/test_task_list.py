"""The prediction page's task list: staff read a prediction's Celery tasks as django-celery-results
recorded them (name, state, worker, times, the traceback of a failure); lab members do not.

The failing prediction is one queued before an upgrade removed its pipeline version from the
server: the catalogue keeps the version's row (installed: false) for the history, and the worker
that picks up the prediction's prepare step cannot find the code, so the task raises.
"""

import re
from html import unescape

import pytest
from django.test import Client
from django.urls import reverse

from predictions import engine, services, task_records
from predictions.models import Pipeline, Status
from tests.conftest import CMU_SLIDE, wait_final, wait_for
from tests.factories import MemberFactory, PredictionFactory, SlideRunFactory

GONE = "No pipeline tissue-area version 0.1 is installed on this server."


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def task_rows(page: str) -> dict[str, dict]:
    """task id -> {"state", "text"} for each row of the page's task table."""
    rows = {}
    for task_id, state, body in re.findall(r'<tr data-task="([^"]+)" data-state="([^"]+)">(.*?)</tr>', page, re.S):
        rows[task_id] = {"state": state, "text": unescape(re.sub(r"<[^>]+>", " ", body))}
    return rows


@pytest.fixture
def carol(lab_a):
    """Staff (an admin of the server) and a member of lab A."""
    return MemberFactory(username="carol", lab=lab_a, is_staff=True)


def queued_on_a_removed_version(experiment, slide):
    gone = Pipeline.objects.create(name="tissue-area", version="0.1", title="Tissue area (retired)",
                                   installed=False, batch_queue="cpu")
    prediction = PredictionFactory(experiment=experiment, pipeline=gone, params={})
    run = SlideRunFactory(prediction=prediction, slide=slide)
    engine.send_start(prediction)  # as the queued prediction's start, sent again after the upgrade
    return prediction, run


@pytest.mark.worker
def test_staff_read_the_tasks_of_a_failed_step_with_its_traceback(workers, pipelines, make_slide, experiment,
                                                                 alice, bob, carol):
    slide = make_slide(CMU_SLIDE, "case-01.svs")
    done = wait_final(services.submit_prediction(experiment, pipelines["tissue-area"], [slide], user=alice))
    assert done.status == Status.SUCCEEDED, done.error
    failing, run = queued_on_a_removed_version(experiment, slide)
    prepare = f"p{failing.pk}-r{run.pk}-prepare"
    wait_for(lambda: task_records.prediction_tasks(failing).counts.get("FAILURE"), timeout=90,
             message="the prepare step to fail on the worker")

    page = logged_in(carol).get(reverse("predictions:detail", args=[failing.pk])).content.decode()
    rows = task_rows(page)
    assert set(rows) == {f"p{failing.pk}-start", prepare}  # nothing of the other prediction
    assert rows[f"p{failing.pk}-start"]["state"] == "SUCCESS"
    assert "predictions.cpu.start_prediction" in rows[f"p{failing.pk}-start"]["text"]
    assert rows[prepare]["state"] == "FAILURE"
    assert "predictions.cpu.prepare_slide" in rows[prepare]["text"] and workers.cpu_name in rows[prepare]["text"]
    traceback = re.search(rf'<tr data-traceback="{prepare}">(.*?)</tr>', page, re.S)
    assert traceback and "Traceback (most recent call last)" in unescape(traceback.group(1))
    assert f"LookupError: {GONE}" in unescape(traceback.group(1))
    assert "1 FAILURE" in page and "1 SUCCESS" in page
    # However long the list, a failure is never among the tasks left out.
    shortened = task_records.prediction_tasks(failing, limit=1)
    assert [t.task_id for t in shortened.shown] == [prepare] and shortened.hidden == 1

    # The prediction that ran: each of its steps succeeded, on the cpu worker.
    page = logged_in(carol).get(reverse("predictions:detail", args=[done.pk])).content.decode()
    rows = task_rows(page)
    assert {r["state"] for r in rows.values()} == {"SUCCESS"}
    assert {f"p{done.pk}-start", f"p{done.pk}-r{done.runs.get().pk}-prepare"} <= set(rows)
    assert all(workers.cpu_name in r["text"] for r in rows.values())
    assert "data-traceback" not in page

    # A lab member who is not staff sees the prediction, not its tasks; another lab sees nothing.
    page = logged_in(alice).get(reverse("predictions:detail", args=[failing.pk])).content.decode()
    assert "data-tasks" not in page and not task_rows(page) and GONE not in page
    assert logged_in(bob).get(reverse("predictions:detail", args=[failing.pk])).status_code == 404


def test_staff_see_when_no_task_is_recorded(pipeline_rows, experiment, carol):
    prediction = PredictionFactory(experiment=experiment)  # never sent: nothing is committed here
    page = logged_in(carol).get(reverse("predictions:detail", args=[prediction.pk])).content.decode()
    assert "data-tasks" in page and "No task of this prediction is recorded" in page


def test_staff_of_another_lab_get_404(pipeline_rows, experiment, lab_b):
    prediction = PredictionFactory(experiment=experiment)
    admin_elsewhere = MemberFactory(username="dora", lab=lab_b, is_staff=True)
    assert logged_in(admin_elsewhere).get(reverse("predictions:detail", args=[prediction.pk])).status_code == 404
