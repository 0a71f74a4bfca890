"""Analyse slide files from a shell, through the same queues and workers as the web app.

    python manage.py analyse --pipeline <name> --wait slide1.svs slide2.svs
"""

import json
import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from experiments import services as slide_services
from experiments.models import Experiment, Lab, Slide, Stain
from predictions import services
from predictions.models import Pipeline, Prediction, Status


class Command(BaseCommand):
    help = "Import slide files into an experiment and run a pipeline on them."

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", metavar="FILE")
        parser.add_argument("--pipeline", required=True, help="Pipeline name, as the new-prediction page or /api/v1/pipelines/ lists it.")
        parser.add_argument("--lab", default="Command line", help="Lab name (created if needed).")
        parser.add_argument("--experiment", default="Command line", help="Experiment name (created if needed).")
        parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                            help="A pipeline parameter; repeat for several.")
        parser.add_argument("--stain", choices=[c for c in Stain.values if c],
                            help="The slides' stain (he: H&E, hdab: hematoxylin-DAB, other). Without it the "
                                 "stain is the experiment's, or estimated from each slide when none is declared.")
        parser.add_argument("--urgent", action="store_true", help="Run before normal work still waiting.")
        parser.add_argument("--wait", action="store_true", help="Wait for the end, then print the figures.")
        parser.add_argument("--json", action="store_true", help="Print one JSON document on stdout.")
        parser.add_argument("--timeout", type=float, default=24 * 3600, help="Seconds to wait at most.")

    def handle(self, *args, **opts):
        pipeline = Pipeline.objects.current(opts["pipeline"])
        if pipeline is None:
            names = ", ".join(sorted(set(Pipeline.objects.enabled().values_list("name", flat=True))))
            raise CommandError(f"No enabled pipeline called {opts['pipeline']!r}. Available: {names}.")
        params = {}
        for item in opts["param"]:
            key, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--param takes KEY=VALUE, got {item!r}.")
            params[key.strip()] = value.strip()
        paths = [Path(f) for f in opts["files"]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CommandError(f"No such file: {', '.join(missing)}")

        lab, _ = Lab.objects.get_or_create(name=opts["lab"])
        experiment, _ = Experiment.objects.get_or_create(lab=lab, name=opts["experiment"])
        # The same file twice (in this run or an earlier one) is one slide.
        slides = [slide_services.add_file(experiment, path) for path in paths]
        self._wait_for_validation(slides, opts["timeout"])
        ready = [s for s in slides if s.status == Slide.Status.READY]
        if opts["stain"]:
            Slide.objects.filter(pk__in=[s.pk for s in slides]).update(stain=opts["stain"])
            for s in slides:
                s.stain = opts["stain"]
        if not ready:
            self._report(None, slides, opts)
            sys.exit(1)
        try:
            prediction = services.submit_prediction(
                experiment, pipeline, ready, params, trigger=Prediction.Trigger.COMMAND,
                priority=Prediction.Priority.URGENT if opts["urgent"] else Prediction.Priority.NORMAL)
        except services.SubmitError as exc:
            raise CommandError(str(exc)) from exc
        if not opts["wait"]:
            self._report(prediction, slides, opts)
            return
        self._follow(prediction, opts["timeout"])
        self._report(prediction, slides, opts)
        if prediction.status != Status.SUCCEEDED or len(ready) < len(slides):
            sys.exit(1)

    def _wait_for_validation(self, slides, timeout):
        deadline = time.monotonic() + timeout
        for slide in slides:
            while slide.status == Slide.Status.PENDING:
                if time.monotonic() > deadline:
                    raise CommandError("Timed out waiting for the slides to be checked; is a cpu worker running?")
                time.sleep(0.3)
                slide.refresh_from_db()

    def _follow(self, prediction, timeout):
        deadline = time.monotonic() + timeout
        while True:
            prediction.refresh_from_db()
            done, total = prediction.done_units, max(prediction.total_units, 1)
            width = 30
            filled = int(width * done / total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * done / total:5.1f}% "
                             f"{done}/{total} {prediction.status:<10}")
            sys.stderr.flush()
            if prediction.is_final:
                sys.stderr.write("\n")
                return
            if time.monotonic() > deadline:
                sys.stderr.write("\n")
                raise CommandError(f"Timed out; prediction #{prediction.pk} is still {prediction.status}.")
            time.sleep(0.5)

    def _report(self, prediction, slides, opts):
        runs = {r.slide_id: r for r in prediction.runs.all()} if prediction else {}
        rows = []
        for slide in slides:
            run = runs.get(slide.pk)
            rows.append({
                "file": slide.original_name,
                "slide_id": slide.pk,
                "status": run.status if run else slide.status,
                "error": (run.error if run else slide.error) or None,
                "metrics": (run.metrics or {}) if run else {},
                "stain": _stain(run),
            })
        document = {
            "prediction": prediction.pk if prediction else None,
            "status": prediction.status if prediction else Status.FAILED,
            "pipeline": f"{prediction.pipeline.name} {prediction.pipeline.version}" if prediction else opts["pipeline"],
            "error": prediction.error or None if prediction else "No slide could be read.",
            "slides": rows,
        }
        if opts["json"]:
            self.stdout.write(json.dumps(document, indent=2))
            return
        if prediction:
            self.stdout.write(f"Prediction #{prediction.pk} ({document['pipeline']}): {prediction.status}")
        if prediction and not opts["wait"]:
            self.stdout.write(f"Follow it at /predictions/{prediction.pk}/ or rerun with --wait.")
            return
        names = []
        for row in rows:
            names += [k for k in row["metrics"] if k not in names]
        header = ["file", "status", *names]
        table = [[row["file"], row["status"], *[_fmt(row["metrics"].get(n)) for n in names]] for row in rows]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
        for line in [header, *table]:
            self.stdout.write("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
        for row in rows:
            if row["error"]:
                self.stdout.write(f"{row['file']}: {row['error']}")
        for row in rows:
            if row["stain"]:
                self.stdout.write(f"{row['file']}: stain {row['stain']}")


def _stain(run) -> str | None:
    """What the run took the slide's stain to be, in words: declared, or estimated and how."""
    if run is None:
        return None
    estimate = ((run.plan or {}).get("extras") or {}).get("stain")
    declared = Stain(run.declared_stain).label if run.declared_stain else None
    if estimate is None:
        return f"declared {declared}" if declared else None
    found = (f"second stain {estimate['second_stain']}" +
             (f", {estimate['angles']['dab_angle']:.0f}° from DAB" if "dab_angle" in estimate.get("angles", {}) else ""))
    if declared:
        return f"declared {declared}; vectors estimated from the slide ({found})"
    return f"not declared, estimated from the slide ({found}; declare it with --stain)"


def _fmt(value):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
