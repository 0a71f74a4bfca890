"""What people do with an experiment's slides, one function per use case: upload files, import
them from the lab's file share, add a file from this machine (manage.py analyse), list the
experiments with their slide counts, and delete slides and experiments (lab managers).

The pages (views.py), the REST API (api.py) and the commands call these and only turn their
answers into a page, a JSON response or a line on a terminal. Each new slide is checked on a
worker, sent after commit.
"""

import shutil
from pathlib import Path

from django.core.exceptions import PermissionDenied
from django.core.files import File
from django.db import transaction
from django.db.models import Count, ProtectedError, Q
from django.utils import timezone

from . import dependents
from .models import Experiment, Lab, Slide
from .slide_files import sha256_of
from .uploads import ImportPathError, clean_file_name, display_name, human_size, import_root, resolve_import_path


class StorageQuotaExceeded(ValueError):
    """The files would take the lab past its storage quota; str(exc) says what to do (API: 400)."""


class DeleteRefused(ValueError):
    """Not now: work is still queued or running on the slides (API: 409)."""


NOT_A_MANAGER = "Only the lab's managers (and staff) may delete slides and experiments."


def _validate_after_commit(slide: Slide) -> None:
    from .tasks import validate_slide

    # The worker must never receive the id of a row it cannot see yet.
    transaction.on_commit(lambda: validate_slide.delay(slide.pk))


def experiments_with_counts(user):
    """The experiments of the user's labs, each with slide_count and ready_slide_count."""
    return Experiment.objects.for_user(user).annotate(
        slide_count=Count("slides", distinct=True),
        ready_slide_count=Count("slides", filter=Q(slides__status=Slide.Status.READY), distinct=True),
    )


def check_storage(lab: Lab, incoming: int) -> None:
    """StorageQuotaExceeded when `incoming` more bytes would take the lab past its quota."""
    quota = lab.storage_quota_bytes
    if not quota:
        return
    used = lab.storage_used()
    if used + incoming > quota:
        raise StorageQuotaExceeded(
            f"{lab.name} stores {human_size(used)} of its {human_size(quota)} quota; these files "
            f"({human_size(incoming)}) would pass it. A lab manager can delete slides that are no longer "
            "needed, or an admin can raise the lab's quota.")


def upload_slides(experiment: Experiment, files, user) -> list[Slide]:
    """One slide per uploaded file; all of them or, if storing one fails, none."""
    check_storage(experiment.lab, sum(f.size for f in files))
    with transaction.atomic():
        return [add_upload(experiment, f, user) for f in files]


def import_slides(experiment: Experiment, paths, user) -> list[Slide]:
    """One slide per path (relative to the lab's import folder), copied in by the validation task.

    ImportPathError, and no slide at all, when any path is outside the share, missing or a
    name the file system cannot hold.
    """
    try:
        resolved = [resolve_import_path(p, experiment.lab) for p in paths]
    except ImportPathError:
        raise
    except (OSError, ValueError) as exc:  # a name the file system cannot hold (too long, undecodable)
        raise ImportPathError("That file does not exist in the import folder.") from exc
    check_storage(experiment.lab, sum(real.stat().st_size for real in resolved))
    with transaction.atomic():
        return [add_import(experiment, real, user) for real in resolved]


def add_file(experiment: Experiment, path: Path, user=None) -> Slide:
    """A slide from a file on this machine, stored like an upload; or the experiment's slide
    with the same content (by sha256) if it has one that is not invalid, so the same file given
    twice is one slide."""
    digest = sha256_of(path)
    existing = experiment.slides.filter(sha256=digest).exclude(status=Slide.Status.INVALID).first()
    if existing:
        return existing
    with open(path, "rb") as fh, transaction.atomic():
        return add_upload(experiment, File(fh, name=path.name), user, sha256=digest)


def add_upload(experiment: Experiment, uploaded_file, user, sha256: str = "") -> Slide:
    """One slide from one file (an upload, or any django File). `sha256`, when the caller has it
    already, lets a later add_file find this slide before the worker has checked it."""
    slide = Slide(
        experiment=experiment,
        original_name=display_name(uploaded_file.name),
        source=Slide.Source.UPLOAD,
        uploaded_by=user,
        size_bytes=uploaded_file.size,
        sha256=sha256,
    )
    slide.file.save(clean_file_name(uploaded_file.name), uploaded_file, save=False)
    slide.save()
    _validate_after_commit(slide)
    return slide


def add_import(experiment: Experiment, real_path: Path, user) -> Slide:
    """A slide to be copied in from the import root by the validation task."""
    slide = Slide.objects.create(
        experiment=experiment,
        original_name=display_name(real_path.name),
        source=Slide.Source.IMPORT,
        import_path=str(real_path.relative_to(import_root(experiment.lab))),
        uploaded_by=user,
        size_bytes=real_path.stat().st_size,
    )
    _validate_after_commit(slide)
    return slide


# -- deleting (lab managers) --------------------------------------------------------------------
def _check_manager(lab: Lab, user) -> None:
    if not lab.is_manager(user):
        raise PermissionDenied(NOT_A_MANAGER)


def _check_idle(slides) -> None:
    reasons = dependents.reasons_to_wait(slides)
    if reasons:
        raise DeleteRefused(" ".join(reasons))


def _remove_files(slide: Slide) -> None:
    """The slide's file, thumbnail and cached viewer tiles, removed once the deletion commits
    (a rolled-back deletion must still find them)."""
    from .viewer import tile_cache_dir

    for field in (slide.file, slide.thumbnail):
        if field:
            storage, name = field.storage, field.name
            transaction.on_commit(lambda storage=storage, name=name: storage.delete(name))
    tiles = tile_cache_dir() / f"{slide.pk}-{slide.sha256}"
    transaction.on_commit(lambda: shutil.rmtree(tiles, ignore_errors=True))


def delete_slide(slide: Slide, user) -> str:
    """Remove a slide and its file; "deleted" or "kept" (see below). Lab managers and staff only.

    A slide that results were computed from stays as a row with status "deleted": its file and
    thumbnail are removed (that is the storage), while its name, checksum, size and who deleted it
    when stay, so those results remain readable with their provenance. A slide no result refers
    to goes entirely. DeleteRefused while work on it is queued or running.
    """
    _check_manager(slide.experiment.lab, user)
    with transaction.atomic():
        slide = Slide.objects.select_for_update().get(pk=slide.pk)
        _check_idle(Slide.objects.filter(pk=slide.pk))
        _remove_files(slide)
        try:
            with transaction.atomic():
                slide.delete()
            return "deleted"
        except ProtectedError:   # results refer to it (SlideRun.slide is PROTECT)
            Slide.objects.filter(pk=slide.pk).update(
                status=Slide.Status.DELETED, file="", thumbnail="", deleted_at=timezone.now(), deleted_by=user)
            return "kept"


def delete_experiment(experiment: Experiment, user) -> None:
    """Remove an experiment with its slides, their files, and every prediction and result of it.
    Lab managers and staff only; DeleteRefused while work on it is queued or running."""
    _check_manager(experiment.lab, user)
    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
        _check_idle(experiment.slides.all())
        dependents.clean_up(experiment)
        for slide in experiment.slides.all():
            _remove_files(slide)
        experiment.delete()
