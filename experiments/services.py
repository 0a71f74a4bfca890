"""What people do with an experiment's slides, one function per use case: upload files, import
them from the lab's file share, add a file from this machine (manage.py analyse), and list the
experiments with their slide counts.

The pages (views.py), the REST API (api.py) and the commands call these and only turn their
answers into a page, a JSON response or a line on a terminal. Each new slide is checked on a
worker, sent after commit.
"""

from pathlib import Path

from django.core.files import File
from django.db import transaction
from django.db.models import Count, Q

from .models import Experiment, Slide
from .slide_files import sha256_of
from .uploads import ImportPathError, clean_file_name, display_name, import_root, resolve_import_path


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


def upload_slides(experiment: Experiment, files, user) -> list[Slide]:
    """One slide per uploaded file; all of them or, if storing one fails, none."""
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
