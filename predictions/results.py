"""A prediction's figures as one table: the same columns in the API's JSON and CSV (and the page)."""

import csv
import io

from .models import Prediction, SlideRun


def runs_of(prediction: Prediction) -> list[SlideRun]:
    return list(prediction.runs.select_related("slide").order_by("slide__original_name", "pk"))


def metric_names(runs) -> list[str]:
    """Every figure name met in the runs, in first-seen order (stable for one pipeline)."""
    names = []
    for run in runs:
        for key in run.metrics or {}:
            if key not in names:
                names.append(key)
    return names


def figures_csv(prediction: Prediction) -> str:
    """One row per slide: slide, slide_sha256, status, error, then each figure ("" when none)."""
    runs = runs_of(prediction)
    names = metric_names(runs)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["slide", "slide_sha256", "status", "error", *names])
    for run in runs:
        values = [(run.metrics or {}).get(k) for k in names]
        writer.writerow([run.slide.original_name, run.slide_sha256, run.status, run.error,
                         *["" if v is None else v for v in values]])
    return out.getvalue()
