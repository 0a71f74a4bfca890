"""engine.inline_steps(): the steps of a prediction run in this process instead of on the workers
(how seed_validation makes the demo data before any worker runs): the prediction ends with the
same figures a worker would give, nothing reaches the broker, and what is not a step is refused."""

import pytest

from predictions import engine
from predictions.models import Status
from tests.conftest import CMU_SLIDE

pytestmark = pytest.mark.django_db(transaction=True)   # steps are sent after commit, as always


def test_a_prediction_runs_to_its_end_in_this_process(make_slide, pipelines):
    from django_celery_results.models import TaskResult

    slide = make_slide(CMU_SLIDE)
    with engine.inline_steps() as steps:
        prediction = engine.submit(slide.experiment, pipelines["nuclei-density"], [slide], {"tile_size": 512})
        # The queue being empty, the dispatcher's first step at once; then the start message.
        assert [name for name, _ in steps.pending] == ["predictions.cpu.prepare_slide",
                                                       "predictions.cpu.start_prediction"]
        ran = steps.run()
    prediction.refresh_from_db()
    run = prediction.runs.get()
    assert prediction.status == Status.SUCCEEDED and run.status == Status.SUCCEEDED, run.error
    assert run.metrics["nuclei_count"] > 1000 and run.batches.count() >= 1
    # start, prepare, every batch, aggregate: one after the other, and nothing left.
    assert ran == 3 + run.batches.count() and not steps.pending
    assert not TaskResult.objects.exists()   # no message was published


def test_an_aggregate_redelivered_after_its_slide_ended_ends_the_prediction(make_slide, pipelines):
    """A worker killed between ending the last slide and advancing its prediction: the message
    comes again, and the slide's work is not redone, but the prediction ends."""
    slide = make_slide(CMU_SLIDE)
    with engine.inline_steps() as steps:
        prediction = engine.submit(slide.experiment, pipelines["tissue-area"], [slide])
        steps.run()
    run = prediction.runs.get()
    finished_at = run.finished_at
    type(prediction).objects.filter(pk=prediction.pk).update(status=Status.RUNNING, finished_at=None)
    with engine.inline_steps():
        engine.aggregate(run.pk)
    prediction.refresh_from_db()
    run.refresh_from_db()
    assert prediction.status == Status.SUCCEEDED and prediction.finished_at is not None
    assert run.finished_at == finished_at   # not aggregated a second time


def test_outside_inline_steps_the_steps_go_to_the_broker_again(make_slide, pipelines):
    from django_celery_results.models import TaskResult

    slide = make_slide(CMU_SLIDE)
    with engine.inline_steps():
        pass
    prediction = engine.submit(slide.experiment, pipelines["tissue-area"], [slide])
    # The start message was published (its task row is written at publish time).
    assert TaskResult.objects.filter(task_id=engine.start_task_id(prediction)).exists()
    engine.cancel(prediction)


def test_what_is_not_a_prediction_step_is_refused():
    with engine.inline_steps() as steps:
        steps.send("experiments.cpu.validate_slide", [1])
        with pytest.raises(LookupError, match="experiments.cpu.validate_slide is not a prediction step"):
            steps.run()
