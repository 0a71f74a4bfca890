"""Labs, their experiments, and the slides in them."""

import uuid
from pathlib import PurePath

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse
from django.utils.text import slugify


class Lab(models.Model):
    """A team. Everything a user sees is reached through the labs they belong to."""

    name = models.CharField(max_length=120, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="labs", blank=True)
    managers = models.ManyToManyField(
        settings.AUTH_USER_MODEL, related_name="managed_labs", blank=True,
        help_text="Members who may also mark work urgent and delete slides and experiments (they are "
                  "made members when saved). Staff may do all of this in every lab.")
    storage_quota_gb = models.PositiveIntegerField(
        "storage quota (GB)", null=True, blank=True,
        help_text="The most slide files this lab may store. Empty: the server's default "
                  "(HISTOIA_LAB_STORAGE_QUOTA_GB); 0: no limit.")
    import_folder = models.CharField(
        max_length=255, blank=True,
        help_text="The folder under SLIDE_IMPORT_ROOT this lab lists and imports slides from, e.g. "
                  "pathology/liver. Empty: a folder named after the lab (its name in lower case, "
                  "words joined by -). A lab sees and imports nothing outside it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def is_manager(self, user) -> bool:
        """Whether `user` may mark this lab's work urgent and delete its slides and experiments."""
        return user.is_staff or (user.is_authenticated and self.managers.filter(pk=user.pk).exists())

    @property
    def storage_quota_bytes(self) -> int:
        """The lab's storage quota in bytes; 0 means no limit."""
        gb = self.storage_quota_gb if self.storage_quota_gb is not None else settings.HISTOIA_LAB_STORAGE_QUOTA_GB
        return gb * 1024 ** 3

    def storage_used(self) -> int:
        """Bytes of slide files the lab stores now (deleted slides' files are gone)."""
        used = Slide.objects.filter(experiment__lab=self).exclude(status=SlideStatus.DELETED).aggregate(
            total=models.Sum("size_bytes"))["total"]
        return used or 0

    @property
    def import_folder_name(self) -> str:
        return self.import_folder.strip("/") or slugify(self.name)

    def clean(self):
        parts = self.import_folder.strip("/").split("/") if self.import_folder.strip("/") else []
        if any(part in ("", ".", "..") for part in parts) or "\x00" in self.import_folder:
            raise ValidationError({"import_folder": "A folder inside the share, e.g. pathology/liver "
                                                    "(no .., no empty parts)."})


class ExperimentQuerySet(models.QuerySet):
    def for_user(self, user):
        """Only the experiments of the user's labs: the one door every view goes through."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(lab__members=user)


class Stain(models.TextChoices):
    """What a slide is stained with. Unknown ("") means: estimate it from the slide and say so."""

    UNKNOWN = "", "Not declared (estimated from each slide)"
    HE = "he", "H&E (hematoxylin and eosin)"
    HDAB = "hdab", "IHC: hematoxylin and DAB"
    OTHER = "other", "Other stain"


class Experiment(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    notes = models.TextField(blank=True)
    stain = models.CharField(max_length=10, choices=Stain.choices, default=Stain.UNKNOWN, blank=True,
                             help_text="The stain of the experiment's slides; a slide can say otherwise.")
    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="experiments")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ExperimentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["lab", "name"], name="unique_experiment_name_per_lab")
        ]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("experiments:detail", args=[self.pk])


def slide_upload_path(slide, filename):
    # A random folder per slide: two uploads with the same name never collide, and the stored
    # path reveals nothing a user typed except the cleaned file name.
    return f"slides/lab-{slide.experiment.lab_id}/{uuid.uuid4().hex}/{PurePath(filename).name}"


def thumbnail_path(slide, filename):
    return f"thumbnails/lab-{slide.experiment.lab_id}/slide-{slide.pk}.png"


class SlideStatus(models.TextChoices):
    """Where a slide is: pending until a worker has checked its file, then ready or invalid;
    deleted once a lab manager removed its file while results computed from it were kept."""

    PENDING = "pending", "Pending"
    READY = "ready", "Ready"
    INVALID = "invalid", "Invalid"
    DELETED = "deleted", "Deleted"


class SlideQuerySet(models.QuerySet):
    def for_user(self, user):
        if not user.is_authenticated:
            return self.none()
        return self.filter(experiment__lab__members=user)


class Slide(models.Model):
    Status = SlideStatus  # status enums are module-level TextChoices, reached from their model too

    class Source(models.TextChoices):
        UPLOAD = "upload", "Upload"
        IMPORT = "import", "Import"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="slides")
    file = models.FileField(upload_to=slide_upload_path, max_length=500, blank=True)
    original_name = models.CharField(max_length=255)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.UPLOAD)
    # For imports: the path relative to SLIDE_IMPORT_ROOT it was copied from.
    import_path = models.CharField(max_length=1000, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    error = models.TextField(blank=True)

    sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    vendor = models.CharField(max_length=50, blank=True, help_text="OpenSlide vendor or image format")
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    level_count = models.PositiveSmallIntegerField(null=True, blank=True)
    mpp = models.FloatField("µm per pixel", null=True, blank=True)
    objective_power = models.FloatField(null=True, blank=True)
    thumbnail = models.ImageField(upload_to=thumbnail_path, max_length=300, blank=True)
    stain = models.CharField(max_length=10, choices=Stain.choices, default=Stain.UNKNOWN, blank=True,
                             help_text="Leave empty to use the experiment's stain.")
    conversion = models.TextField(blank=True, help_text="How the stored file was made from the one the lab "
                                                        "gave, when it had no pyramid and was converted.")

    created_at = models.DateTimeField(auto_now_add=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    objects = SlideQuerySet.as_manager()

    class Meta:
        ordering = ["experiment", "original_name", "pk"]

    def __str__(self):
        return self.original_name

    @property
    def is_ready(self):
        return self.status == self.Status.READY

    @property
    def effective_stain(self) -> str:
        """The slide's own stain if set, else its experiment's; "" when neither declares one."""
        return self.stain or self.experiment.stain

    @property
    def mpp_missing(self):
        return self.mpp is None
