"""Pipelines, registered models, predictions, and their per-slide and per-batch results."""

import hashlib

from django.conf import settings
from django.db import models
from django.urls import reverse

from experiments.models import Experiment, Slide
from histoia.queues import PRIORITY_NORMAL, PRIORITY_URGENT

from .versions import version_key


class PipelineQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True, installed=True)

    def current(self, name: str) -> "Pipeline | None":
        """The version of pipeline `name` new work uses: its newest enabled, installed version,
        compared as versions (1.10 is newer than 1.9; predictions/versions.py). None if none."""
        return self.enabled().filter(name=name).order_by("-version_order", "-pk").first()

    def rank_versions(self, name: str) -> dict[int, int]:
        """Number the versions of pipeline `name` from 0 (oldest) in version order and store the
        numbers (version_order); returns {pk: number}."""
        rows = sorted(self.filter(name=name).values_list("pk", "version", "version_order"),
                      key=lambda row: (version_key(row[1]), row[0]))
        for number, (pk, _, stored) in enumerate(rows):
            if stored != number:
                self.filter(pk=pk).update(version_order=number)
        return {pk: number for number, (pk, _, _) in enumerate(rows)}


class Pipeline(models.Model):
    """One version of a pipeline from the code registry; admins enable, disable and describe it."""

    name = models.CharField(max_length=100)
    version = models.CharField(max_length=20)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    # False when the code for this version is no longer on the server (kept for history).
    installed = models.BooleanField(default=True, editable=False)
    batch_queue = models.CharField(max_length=10, editable=False)
    param_schema = models.JSONField(default=list, editable=False)
    steps = models.JSONField(default=list, editable=False)
    model_name = models.CharField(max_length=100, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Where this version stands among the versions of its name, 0 = oldest, compared as versions
    # (kept by save()): lists sort on it in the database, which can only compare `version` as text.
    version_order = models.PositiveIntegerField(default=0, editable=False)

    objects = PipelineQuerySet.as_manager()

    class Meta:
        # By name, each name's newest version first; never "-version" (text puts 1.9 above 1.10).
        ordering = ["name", "-version_order", "-pk"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="unique_pipeline_version")]

    def __str__(self):
        return f"{self.name} {self.version}"

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        # A new version may come between older ones: number them all again.
        self.version_order = Pipeline.objects.rank_versions(self.name)[self.pk]

    @property
    def code(self):
        from .pipelines import get_pipeline

        return get_pipeline(self.name, self.version)

    @property
    def code_if_installed(self):
        """The code, or None where this machine lacks it (a row the last migrate saw as installed may
        have lost its package since; a page or list then shows the row without what only code knows)."""
        try:
            return self.code if self.installed else None
        except LookupError:
            return None


def model_upload_path(instance, filename):
    return f"models/{instance.name}/{instance.version}/{filename}"


class RegisteredModel(models.Model):
    """A TorchScript tile classifier registered by an admin."""

    name = models.CharField(max_length=100, help_text="Model family, e.g. tissue-classifier-demo. "
                            "A model pipeline uses the newest enabled version of its family.")
    version = models.CharField(max_length=40)
    file = models.FileField(upload_to=model_upload_path, max_length=300,
                            help_text="A TorchScript file (torch.jit.save).")
    sha256 = models.CharField(max_length=64, editable=False)
    tile_size = models.PositiveIntegerField(help_text="Tile side in pixels the model takes.")
    mpp = models.FloatField("µm per pixel", help_text="Resolution the model expects.")
    mean = models.JSONField(default=list, help_text="Per-channel RGB mean in [0, 1], e.g. [0.5, 0.5, 0.5].")
    std = models.JSONField(default=list, help_text="Per-channel RGB standard deviation in [0, 1].")
    class_names = models.JSONField(default=list, help_text='Output classes in order, e.g. ["background", "tumour"].')
    description = models.TextField(blank=True, help_text="What it was trained on and what it is for.")
    # The model card: what a histologist needs to judge the model's figures (shown on the
    # pipeline form, in every prediction's provenance and in the API).
    trained_on = models.TextField(blank=True, help_text="The data it was trained on: tissues, stains, "
                                  "scanners, number of slides, how the labels were made.")
    label_meanings = models.JSONField(default=dict, blank=True,
                                      help_text='What each class means, e.g. {"tumour": "invasive carcinoma"}.')
    stain_normalisation = models.CharField(max_length=200, blank=True,
                                           help_text="Stain normalisation the model expects, e.g. "
                                           "\"none\" or \"Macenko to reference H&E\".")
    validation = models.TextField(blank=True, help_text="Its validation metric and on what data "
                                  "(e.g. \"balanced accuracy 0.91 on 40 held-out slides of lab X\").")
    not_for_diagnosis = models.BooleanField(default=False, help_text="A demonstration or research model: "
                                            "its outputs are marked \"not for diagnosis\" everywhere.")
    enabled = models.BooleanField(default=True)
    registered_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                      blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-created_at"]
        verbose_name = "registered model"
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="unique_model_version")]

    def __str__(self):
        return f"{self.name} {self.version}"

    def save(self, *args, **kwargs):
        if self.file and not self.sha256:
            digest = hashlib.sha256()
            self.file.open("rb")
            for chunk in self.file.chunks():
                digest.update(chunk)
            self.file.seek(0)
            self.sha256 = digest.hexdigest()
        super().save(*args, **kwargs)

    def card(self) -> dict:
        """The model card as shown to users (pipeline form, provenance, API)."""
        return {
            "name": self.name, "version": self.version, "sha256": self.sha256,
            "description": self.description, "trained_on": self.trained_on,
            "classes": [{"name": n, "meaning": (self.label_meanings or {}).get(n, "")} for n in self.class_names],
            "mpp": self.mpp, "tile_size": self.tile_size, "mean": self.mean, "std": self.std,
            "stain_normalisation": self.stain_normalisation, "validation": self.validation,
            "not_for_diagnosis": self.not_for_diagnosis,
        }

    def spec(self):
        from .pipelines import ModelSpec

        return ModelSpec(self.file.path, self.sha256, self.tile_size, self.mpp, tuple(self.mean),
                         tuple(self.std), tuple(self.class_names))


class Status(models.TextChoices):
    """Where a prediction, or one slide of it (SlideRun), is: queued, running, then one of FINAL_STATES."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    PARTIAL = "partial", "Partly failed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINAL_STATES = {Status.SUCCEEDED, Status.PARTIAL, Status.FAILED, Status.CANCELLED}


class PredictionQuerySet(models.QuerySet):
    def for_user(self, user):
        if not user.is_authenticated:
            return self.none()
        return self.filter(experiment__lab__members=user)

    def ended_latest(self):
        """The ended predictions, the latest first (the dashboard's "recent", the monitoring
        page's failures), read from the end of prediction_ended_idx."""
        return self.filter(finished_at__isnull=False).order_by("-finished_at", "-pk")


class Prediction(models.Model):
    Status = Status  # status enums are module-level TextChoices, reached from their model too

    class Priority(models.TextChoices):
        NORMAL = "normal", "Normal"
        URGENT = "urgent", "Urgent"

    class Trigger(models.TextChoices):
        USER = "user", "User"
        API = "api", "API"
        SCHEDULE = "schedule", "Schedule"
        RERUN = "rerun", "Re-run"
        COMMAND = "command", "Command line"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="predictions")
    pipeline = models.ForeignKey(Pipeline, on_delete=models.PROTECT, related_name="predictions")
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, null=True, blank=True,
                              related_name="predictions")
    params = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    # The round it runs in among the labs' waiting work, fixed at submit (predictions/run_order.py).
    turn = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.USER)
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                     blank=True, related_name="predictions")
    schedule_name = models.CharField(max_length=200, blank=True)
    rerun_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="reruns")

    # Provenance kept on the row itself, so history survives model or pipeline rows changing.
    model_sha256 = models.CharField(max_length=64, blank=True)
    software_version = models.CharField(max_length=40, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                     blank=True, related_name="+")

    # Progress in tiles (plus one unit per slide for its prepare and aggregate steps), written
    # once per batch; pages and the API read it from here, never from Celery.
    done_units = models.PositiveIntegerField(default=0)
    total_units = models.PositiveIntegerField(default=0)
    # Times the stuck-prediction sweep sent missing work again without progress since
    # (predictions/maintenance.py); reset when the prediction moves again.
    stall_requeues = models.PositiveSmallIntegerField(default=0, editable=False)

    objects = PredictionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "priority", "created_at"], name="prediction_queue_idx"),
            models.Index(fields=["experiment", "-created_at"], name="prediction_experiment_idx"),
            models.Index(fields=["pipeline", "-created_at"], name="prediction_pipeline_idx"),
            models.Index(fields=["triggered_by", "-created_at"], name="prediction_user_idx"),
            # The waiting predictions in run order (dispatch._queue_in_run_order reads them so).
            models.Index(fields=["status", "priority", "turn", "created_at", "id"], name="prediction_waiting_idx"),
            # A submit's turn (dispatch.new_turn): the highest turn served and a lab's highest
            # turn, read from an index end, so a submit costs the same after 100,000 predictions.
            models.Index(fields=["turn"], name="prediction_served_turn_idx",
                         condition=models.Q(started_at__isnull=False) & ~models.Q(priority="urgent")),
            models.Index(fields=["experiment", "-turn"], name="prediction_experiment_turn_idx"),
            # ended_latest(): the dashboard, polled every few seconds, lists the latest ended
            # predictions; without it, a sort of every prediction (133 ms at 100,000).
            models.Index(fields=["-finished_at", "-id"], name="prediction_ended_idx",
                         condition=models.Q(finished_at__isnull=False)),
        ]

    def __str__(self):
        return f"#{self.pk} {self.pipeline} on {self.experiment}"

    def get_absolute_url(self):
        return reverse("predictions:detail", args=[self.pk])

    @property
    def is_final(self):
        return self.status in FINAL_STATES

    @property
    def progress(self) -> float:
        if self.is_final and self.status == Status.SUCCEEDED:
            return 1.0
        return self.done_units / self.total_units if self.total_units else 0.0

    @property
    def celery_priority(self) -> int:
        return PRIORITY_URGENT if self.priority == self.Priority.URGENT else PRIORITY_NORMAL

    def provenance(self) -> dict:
        return {
            "pipeline": self.pipeline.name,
            "pipeline_version": self.pipeline.version,
            "model": str(self.model) if self.model else None,
            "model_card": self.model.card() if self.model else None,
            "model_sha256": self.model_sha256 or None,
            "params": self.params,
            "software_version": self.software_version,
            "trigger": self.trigger,
            "triggered_by": self.triggered_by.get_username() if self.triggered_by else None,
            "schedule": self.schedule_name or None,
            "queued_at": self.created_at.isoformat() if self.created_at else None,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


def result_path(run, filename):
    return f"results/lab-{run.prediction.experiment.lab_id}/prediction-{run.prediction_id}/slide-{run.slide_id}/{filename}"


class SlideRun(models.Model):
    """One slide of a prediction: its plan, progress, figures and result files."""

    Status = Status  # the same states as its prediction
    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="runs")
    slide = models.ForeignKey(Slide, on_delete=models.PROTECT, related_name="runs")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    slide_sha256 = models.CharField(max_length=64, blank=True)

    plan = models.JSONField(null=True, blank=True)
    tissue_mask = models.FileField(upload_to=result_path, max_length=300, blank=True)
    metrics = models.JSONField(null=True, blank=True)
    images = models.JSONField(default=dict, blank=True)   # name -> {"path": ..., "legend": ...}
    tile_table = models.FileField(upload_to=result_path, max_length=300, blank=True)
    # The stain declared for the slide when the prediction was submitted ("" = estimate it).
    declared_stain = models.CharField(max_length=10, blank=True)
    # The slide's stain as the pipeline estimated it in prepare (vectors, glass white, how they
    # were found; predictions/imaging/stain.py StainEstimate), kept apart from the plan so pages
    # that show it never read the plan.
    stain_estimate = models.JSONField(null=True, blank=True)
    # Per-object detections of the whole slide (e.g. nuclei), a compact .npy file written by
    # aggregate from the batches' files; see predictions/detections.py.
    detections = models.FileField(upload_to=result_path, max_length=300, blank=True)

    done_units = models.PositiveIntegerField(default=0)
    total_units = models.PositiveIntegerField(default=0)
    aggregate_dispatched = models.BooleanField(default=False)
    # The dispatcher's bookkeeping (predictions/dispatch.py): the slide's number of tile batches,
    # known once prepare has run, and how many of them have been sent, in index order.
    batch_count = models.PositiveIntegerField(null=True, blank=True)
    batches_sent = models.PositiveIntegerField(default=0)
    dispatched_at = models.DateTimeField(null=True, blank=True)   # when a step of it was last recorded as sent
    timings = models.JSONField(default=dict, blank=True)  # step -> seconds
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["prediction", "slide__original_name", "pk"]
        constraints = [models.UniqueConstraint(fields=["prediction", "slide"], name="unique_slide_per_prediction")]
        # The dispatcher counts the runs in flight on every step and submit (dispatch.in_flight):
        # the running ones, a few, found without reading the queued thousands.
        indexes = [
            models.Index(fields=["status"], name="sliderun_running_idx", condition=models.Q(status="running")),
            # The newest successful runs, which the ETAs measure (queueing.throughput): read from
            # the index's end, not sorted out of a year of runs.
            models.Index(fields=["-finished_at"], name="sliderun_succeeded_idx", condition=models.Q(status="succeeded")),
        ]

    def __str__(self):
        return f"{self.slide} in prediction #{self.prediction_id}"

    @property
    def progress(self) -> float:
        return self.done_units / self.total_units if self.total_units else (1.0 if self.status == Status.SUCCEEDED else 0.0)


class BatchResult(models.Model):
    """The rows of one tile batch. Unique per (run, index): a redelivered batch replaces its own."""

    run = models.ForeignKey(SlideRun, on_delete=models.CASCADE, related_name="batches")
    index = models.PositiveIntegerField()
    rows = models.JSONField()
    tiles = models.PositiveIntegerField()
    queue = models.CharField(max_length=10)
    worker = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    seconds = models.FloatField()

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="unique_batch_per_run")]
        # The newest batches, whose speed the ETAs and batch sizes use (queueing.throughput): with
        # a million batches kept, sorting them all took 0.6 s each time the rate was measured.
        indexes = [models.Index(fields=["-finished_at"], name="batchresult_finished_idx")]


class DispatchLock(models.Model):
    """One row per queue, updated by the dispatcher to hold that queue's lock (see dispatch.py)."""

    queue = models.CharField(max_length=10, primary_key=True)
    at = models.DateTimeField(null=True, blank=True)


class WorkerSlots(models.Model):
    """A worker as it reports itself: the queues it consumes and its number of processes.

    Written when the worker starts and refreshed with its heartbeats; the dispatcher sizes each
    queue's window from the workers heard from recently (predictions/dispatch.py).
    """

    hostname = models.CharField(max_length=200, primary_key=True)
    queues = models.JSONField(default=list)
    processes = models.PositiveIntegerField(default=1)
    seen_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "worker slots"

    def __str__(self):
        return f"{self.hostname} ({self.processes} on {', '.join(self.queues)})"
