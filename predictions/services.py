"""What people do with predictions, one function per use case.

The pages (views.py), the REST API (api.py), `manage.py analyse` and the schedules
(schedules.py) call these and only turn their answers into a page, a JSON response, a line on a
terminal or a schedule's summary; none of them does the work itself, so a rule changed here
holds everywhere. The engine (engine.py) does the work behind them: the checks of a submission,
the rows, the messages sent after commit.

Errors a person must correct are engine.SubmitError: str(exc) is the message shown, `field`
the input at fault for the API's field errors.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from django.core.files import File
from django.db import transaction

from experiments.models import Slide
from histoia.spreadsheet import csv_writer

from . import engine
from .models import Prediction, SlideRun

SubmitError = engine.SubmitError
QuotaExceeded = engine.QuotaExceeded
CancelError = engine.CancelError


def submit_prediction(experiment, pipeline, slides=None, params=None, *, user=None,
                      trigger=Prediction.Trigger.USER, priority=Prediction.Priority.NORMAL,
                      schedule_name: str = "") -> Prediction:
    """Queue `pipeline` on slides of `experiment`; answers at once with the queued prediction.

    `slides` left out (None) means every ready slide of the experiment, as the API's `slides`
    does when it is left out. The engine checks the rest (parameters, slides ready and of the
    experiment, stains, a registered model) and sends the start after commit.
    """
    if slides is None:
        slides = list(experiment.slides.filter(status=Slide.Status.READY))
        if not slides:
            raise SubmitError("This experiment has no ready slides yet: upload slides and wait until "
                              "they are ready.", "slides")
    return engine.submit(experiment, pipeline, slides, params, user=user, trigger=trigger, priority=priority,
                         schedule_name=schedule_name)


def rerun_prediction(old: Prediction, user) -> Prediction:
    """Run a prediction again as it was: same pipeline version, slides, parameters and priority
    (urgent only when the user is a manager of the lab; normal otherwise).

    SubmitError ("Could not re-run: …") when that is no longer possible, e.g. a slide is no
    longer ready or the pipeline version was disabled since.
    """
    slides = [run.slide for run in old.runs.select_related("slide").defer("plan")]
    priority = old.priority
    if priority == Prediction.Priority.URGENT and not old.experiment.lab.is_manager(user):
        priority = Prediction.Priority.NORMAL   # a member's re-run of urgent work waits its turn
    try:
        return engine.submit(old.experiment, old.pipeline, slides, old.params, user=user,
                             trigger=Prediction.Trigger.RERUN, priority=priority, rerun_of=old)
    except SubmitError as exc:
        raise type(exc)(f"Could not re-run: {exc}", exc.field) from exc   # a quota stays a quota


def active_work_on(slides) -> str:
    """Why these slides' files must stay for now: predictions still queued or running on them."""
    active = (Prediction.objects.filter(runs__slide__in=slides, status__in=[Prediction.Status.QUEUED,
                                                                            Prediction.Status.RUNNING])
              .distinct().order_by("pk").values_list("pk", flat=True))
    ids = list(active[:5])
    if not ids:
        return ""
    named = ", ".join(f"#{pk}" for pk in ids)
    return (f"Prediction {named} is still queued or running on these slides: cancel it, or wait until it "
            "ends, then delete." if len(ids) == 1 else
            f"Predictions {named} are still queued or running on these slides: cancel them, or wait until "
            "they end, then delete.")


def delete_predictions_of(experiment) -> None:
    """An experiment's predictions, results and result files go with it (experiments.services)."""
    runs = SlideRun.objects.filter(prediction__experiment=experiment)
    for run in runs.only("tissue_mask", "tile_table", "detections"):
        for field in (run.tissue_mask, run.tile_table, run.detections):
            if field:
                storage, name = field.storage, field.name
                transaction.on_commit(lambda storage=storage, name=name: storage.delete(name))
    Prediction.objects.filter(experiment=experiment).delete()


def cancel_prediction(prediction: Prediction, user) -> None:
    """Stop a queued or running prediction: queued work is dropped, batches already running stop
    at their end. CancelError when it has already ended."""
    engine.cancel(prediction, user)


# -- figures --------------------------------------------------------------------------------------
@dataclass
class FiguresTable:
    """A prediction's figures, one row per slide: the same columns on the page, in the CSV and
    in the API's results.

    `names` are the figures met in the runs (stable names, first-seen order, so the same for
    every slide of a pipeline); each run carries `values`, one per name, None where it has none
    (a slide not finished, or failed).
    """

    names: list[str]
    runs: list[SlideRun]

    def csv(self) -> str:
        """One row per slide: slide, slide_sha256, status, error, then each figure ("" when none)."""
        out = io.StringIO()
        writer = csv_writer(out)
        writer.writerow(["slide", "slide_sha256", "status", "error", *self.names])
        for run in self.runs:
            writer.writerow([run.slide.original_name, run.slide_sha256, run.status, run.error,
                             *["" if v is None else v for v in run.values]])
        return out.getvalue()


def figures_table(prediction: Prediction) -> FiguresTable:
    # Not the plan: it lists every tile of the slide, and the page reads this table every few
    # seconds while the prediction runs.
    runs = list(prediction.runs.select_related("slide").defer("plan").order_by("slide__original_name", "pk"))
    names = []
    for run in runs:
        names += [key for key in run.metrics or {} if key not in names]
    for run in runs:
        run.values = [(run.metrics or {}).get(name) for name in names]
    return FiguresTable(names, runs)


def figures_csv(prediction: Prediction) -> str:
    return figures_table(prediction).csv()


def tile_table(run: SlideRun) -> tuple[File, str] | None:
    """The per-tile table of one slide, opened, and the name it downloads as; None until the
    slide's aggregate step has written it."""
    if not run.tile_table:
        return None
    return run.tile_table.open("rb"), f"prediction-{run.prediction_id}-{run.slide.original_name}-tiles.csv"
