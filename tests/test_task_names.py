"""One scheme for task names, <app>.<queue>.<task> (histoia/queues.py): the name says which app
the task belongs to and which queue it runs on, and the router sends it there. A message sent
under the validation task's name before the scheme still gets its slide checked."""

import re

import pytest
from celery import current_app

from experiments.models import Slide
from histoia.queues import QUEUE_NAMES
from tests.conftest import CMU_SLIDE, wait_for

SCHEME = re.compile(rf"^(?P<app>[a-z]+)\.(?P<queue>{'|'.join(QUEUE_NAMES)})\.(?P<task>[a-z_]+)$")
# Kept so that messages queued before the rename still run; nothing sends them.
BEFORE_THE_SCHEME = {"experiments.validate_slide": "experiments.cpu.validate_slide"}


def our_tasks() -> dict:
    current_app.loader.import_default_modules()   # every app's tasks.py, as a worker does
    return {name: task for name, task in current_app.tasks.items() if not name.startswith("celery.")}


def test_every_task_is_named_app_queue_task_and_runs_on_that_queue():
    tasks = our_tasks()
    assert {"experiments.cpu.validate_slide", "predictions.cpu.start_prediction",
            "predictions.gpu.tile_batch"} <= set(tasks)
    for name, task in tasks.items():
        if name in BEFORE_THE_SCHEME:
            continue
        parts = SCHEME.match(name)
        assert parts, f"{name} is not <app>.<queue>.<task>"
        assert task.__module__.split(".")[0] == parts["app"], name
        assert current_app.amqp.router.route({}, name)["queue"].name == parts["queue"], name


def test_the_names_before_the_scheme_run_the_same_task_body():
    tasks = our_tasks()
    for old, new in BEFORE_THE_SCHEME.items():
        assert tasks[old].run is tasks[new].run


@pytest.mark.worker
def test_a_validation_message_sent_under_the_old_name_still_checks_its_slide(workers, experiment):
    from tests.factories import SlideFactory

    slide = SlideFactory(experiment=experiment, source=CMU_SLIDE, validate=False)
    assert slide.status == Slide.Status.PENDING
    current_app.send_task("experiments.validate_slide", args=[slide.pk])   # as an older release sent it
    wait_for(lambda: Slide.objects.get(pk=slide.pk).status != Slide.Status.PENDING, message="the slide checked")
    slide.refresh_from_db()
    assert slide.status == Slide.Status.READY and slide.width == 2220
