"""Create the demo lab's "Validation" experiment with finished predictions of every pipeline on it.

Called by seed_demo (so by `make run`), before the workers start: a new user opens the app on
real figures, overlays and the viewer. The experiment holds the fast subset of the synthetic
validation set (predictions/imaging/synthetic.py: slides with known content, their ground
truth in the experiment's notes; docs/validation.md) and the shared real slide
(../shared/data/slides/cmu-1-small-region.svs) where present. Its stain is left undeclared, so
every slide runs every pipeline and the DAB pipeline flags the H&E slides with stain_mismatch.

Everything is computed here, in this process, and nothing is sent to the broker: this makes
demo data, it does not exercise the queues, and the workers start with nothing to do. Slides
are stored as uploads are and checked by the validation task's own body; the predictions are
submitted as always (engine.submit, trigger "command") and their steps run through
engine.inline_steps(), the engine's entry point for running steps here instead of on workers.

Idempotent: when the experiment is there with every prediction ended, nothing happens. A seed
that was interrupted is completed: missing slides are added, slides not checked yet are
checked, and unfinished predictions are finished from where they stopped (their steps are
idempotent).
"""

import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from experiments.models import Experiment, Lab, Slide, Stain
from experiments.tasks import validate_slide
from experiments.uploads import clean_file_name, display_name
from predictions import engine
from predictions.catalogue import register_demo_model
from predictions.maintenance import outstanding_work
from predictions.models import FINAL_STATES, Pipeline, Prediction, Status

LAB = "Demo lab"
EXPERIMENT = "Validation"
REAL_SLIDE = settings.BASE_DIR.parent / "shared" / "data" / "slides" / "cmu-1-small-region.svs"
DESCRIPTION = (
    "Demo data made by `manage.py seed_demo`: synthetic slides with known content (the fast subset of "
    "the validation set, see docs/validation.md; what each one holds is in the notes below) and a "
    "real slide (CMU-1, a small region of an Aperio H&E scan), with one prediction of every pipeline. "
    "The stain is not declared, so it is estimated from each slide: the DAB pipeline flags the H&E slides "
    "with stain_mismatch and gives them no DAB figures."
)
# The figure a summary line shows for a slide, by figure name (the first one present wins).
HEADLINE = ("dab_positive_fraction", "nuclei_count", "class_fraction_", "tissue_area_mm2", "tissue_area_px")


def current_pipelines() -> list[Pipeline]:
    """The version new work uses of each enabled pipeline, by name."""
    names = sorted(set(Pipeline.objects.enabled().values_list("name", flat=True)))
    return [Pipeline.objects.current(name) for name in names]


class Command(BaseCommand):
    help = ("Create the demo lab's Validation experiment (synthetic slides with known content and the "
            "shared real slide) with a finished prediction of every pipeline; does nothing if it is there.")

    def handle(self, *args, **options):
        started = time.monotonic()
        lab, _ = Lab.objects.get_or_create(name=LAB)
        experiment = Experiment.objects.filter(lab=lab, name=EXPERIMENT).first()
        if experiment is not None and experiment.predictions.exists() and not self._unfinished(experiment):
            self.stdout.write(f"The {EXPERIMENT} experiment is already there (experiment #{experiment.pk}).")
            return
        self.stdout.write(f"Making the {EXPERIMENT} experiment in {LAB} (demo data, computed here, "
                          "before the workers start)...")
        user = get_user_model().objects.filter(username="histologist").first()
        register_demo_model()
        self._last_report = time.monotonic()
        with engine.inline_steps() as steps:
            if experiment is None:
                experiment = Experiment.objects.create(lab=lab, name=EXPERIMENT, created_by=user,
                                                       stain=Stain.UNKNOWN, description=DESCRIPTION)
            if not experiment.predictions.exists():
                slides = self._slides(experiment, user)
                self._submit(experiment, slides)
            else:
                self._resume(experiment, steps)
            steps.run(self._progress)
        self.stdout.write(f"{EXPERIMENT} experiment ready in {time.monotonic() - started:.0f} s "
                          f"({steps.ran} steps run in this process):")
        for prediction in experiment.predictions.select_related("pipeline").order_by("pipeline__name", "pk"):
            self.stdout.write("  " + summary(prediction))

    # -- slides -------------------------------------------------------------------------------
    def _slides(self, experiment, user) -> list[Slide]:
        """The experiment's slides, every one checked: the validation set and the real slide."""
        from predictions.imaging.synthetic import write_validation_set

        have = {s.original_name: s for s in experiment.slides.exclude(status=Slide.Status.INVALID)}
        with tempfile.TemporaryDirectory(prefix="histoia-validation-") as folder:
            t0 = time.monotonic()
            written = write_validation_set(folder, fast=True)
            self.stdout.write(f"  generated {len(written)} synthetic slides in {time.monotonic() - t0:.0f} s")
            files = [path for path, _ in written]
            if REAL_SLIDE.is_file():
                files.append(REAL_SLIDE)
            else:
                self.stdout.write(f"  {REAL_SLIDE} is not on this machine: the real slide is left out.")
            for path in files:
                if path.name not in have:
                    have[path.name] = self._store(experiment, path, user)
            if not experiment.notes:
                experiment.notes = truth_notes(c for _, c in written)
                if REAL_SLIDE in files:
                    experiment.notes += (f"\n{REAL_SLIDE.name}: a real Aperio H&E scan (a small region of "
                                         "CMU-1), no ground truth.")
                experiment.save(update_fields=["notes"])
        for slide in experiment.slides.filter(status=Slide.Status.PENDING):
            validate_slide(slide.pk)  # the task's body, here: what a cpu worker does with an upload
        slides = list(experiment.slides.order_by("original_name"))
        for slide in slides:
            if slide.status != Slide.Status.READY:
                self.stdout.write(self.style.WARNING(
                    f"  {slide.original_name}: {slide.status}: {slide.error}"))
        ready = [s for s in slides if s.status == Slide.Status.READY]
        if not ready:
            raise CommandError("No slide of the Validation experiment could be read.")
        return ready

    def _store(self, experiment, path: Path, user) -> Slide:
        """A pending slide stored as an upload is (name cleaned, in the lab's folder).

        Not through experiments.services.add_upload: that sends the slide to a cpu worker to be
        checked, and here nothing goes to the workers; _slides() checks it in this process.
        """
        with open(path, "rb") as fh:
            slide = Slide(experiment=experiment, original_name=display_name(path.name),
                          source=Slide.Source.UPLOAD, uploaded_by=user, size_bytes=path.stat().st_size)
            slide.file.save(clean_file_name(path.name), File(fh), save=False)
            slide.save()
        return slide

    # -- predictions --------------------------------------------------------------------------
    def _submit(self, experiment, slides):
        pipelines = current_pipelines()
        # All or none, so that an interrupted seed finds either every prediction or none.
        with transaction.atomic():
            for pipeline in pipelines:
                try:
                    engine.submit(experiment, pipeline, slides, {}, trigger=Prediction.Trigger.COMMAND)
                except engine.SubmitError as exc:
                    self.stdout.write(self.style.WARNING(f"  {pipeline}: not run: {exc}"))
        self.stdout.write(f"  running {', '.join(p.name for p in pipelines)} on {len(slides)} slides")

    def _unfinished(self, experiment):
        return experiment.predictions.exclude(status__in=FINAL_STATES)

    def _resume(self, experiment, steps):
        """Finish the predictions an interrupted seed left queued or running."""
        for prediction in self._unfinished(experiment).select_related("pipeline"):
            self.stdout.write(f"  finishing prediction #{prediction.pk} ({prediction.pipeline}), "
                              "left unfinished")
            if prediction.status == Status.QUEUED:
                engine.send_start(prediction)
                continue
            for work in outstanding_work(prediction):
                steps.send(work.task_name, work.args)
            engine.advance(prediction.pk)  # slides not started yet, or a prediction whose slides all ended

    def _progress(self, steps):
        now = time.monotonic()
        if now - self._last_report >= 10:
            self._last_report = now
            self.stdout.write(f"  ... {steps.ran} steps done, {len(steps.pending)} waiting")


def truth_notes(cases) -> str:
    """What each synthetic slide holds, from its ground truth: the figures to expect."""
    lines = ["What the synthetic slides hold (ground truth; see docs/validation.md):"]
    for case in cases:
        t = case.truth
        stain = t.get("stain")
        parts = [{"he": "H&E", "hdab": "IHC hematoxylin-DAB"}.get(stain, stain or case.kind)]
        if "nuclei_count" in t:
            parts.append(f"{t['nuclei_count']} nuclei")
        if t.get("stain") == "hdab":
            parts.append(f"DAB-positive {100 * t.get('dab_positive_fraction', 0):.0f} % of tissue")
        if "tissue_area_um2" in t:
            parts.append(f"tissue {t['tissue_area_um2'] / 1e6:.4g} mm²")
        if t.get("pieces"):
            parts.append(f"{t['pieces']} pieces of tissue")
        if t.get("fragment"):
            parts.append(f"one small fragment of {t['fragment']['area_um2']:.0f} µm²")
        if t.get("pen_mark"):
            parts.append("a pen mark")
        if t.get("dust_specks"):
            parts.append(f"{t['dust_specks']} dust specks")
        lines.append(f"{case.name}.tiff ({case.kind}): {', '.join(parts)}.")
    return "\n".join(lines)


def headline(metrics: dict) -> tuple[str, str]:
    """One figure of a slide's result, chosen by figure name: (name, value) for the summary line."""
    if metrics.get("stain_mismatch"):
        return "stain_mismatch (no DAB figures)", ""
    for name in HEADLINE:
        if name.endswith("_"):
            shares = {k: v for k, v in metrics.items() if k.startswith(name) and v is not None}
            if shares:
                top = max(shares, key=shares.get)
                return top, f"{shares[top]:.2f}"
        elif metrics.get(name) is not None:
            value = metrics[name]
            return name, f"{value:.3g}" if isinstance(value, float) else str(value)
    return "no figures", ""


def summary(prediction: Prediction) -> str:
    """One line: the prediction, its time of work, and one figure per slide grouped by figure name."""
    runs = list(prediction.runs.select_related("slide").order_by("slide__original_name"))
    work = sum(v for run in runs for k, v in (run.timings or {}).items() if k.endswith("_s"))
    groups: dict[str, list[str]] = {}
    for run in runs:
        name, value = headline(run.metrics or {}) if run.status == Status.SUCCEEDED else (run.status, "")
        groups.setdefault(name, []).append(f"{Path(run.slide.original_name).stem} {value}".strip())
    figures = "; ".join(f"{name}: {', '.join(slides)}" for name, slides in groups.items())
    return (f"#{prediction.pk} {prediction.pipeline.name} {prediction.pipeline.version} {prediction.status} "
            f"({len(runs)} slides, {work:.0f} s of work) {figures}")
