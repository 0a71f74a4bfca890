"""Slide validation, on the cpu queue: copy an import in, open it, record metadata, thumbnail.

Task names are <app>.<queue>.<task> (histoia/queues.py): histoia/celery.py routes on the queue.
"""

import io
import logging
from pathlib import Path

from celery import shared_task
from django.core.files.base import ContentFile, File
from django.utils import timezone

from .models import Slide
from .pyramids import MAX_CONVERT_PIXELS, convert_to_pyramid
from .slide_files import SlideFileError, SlideReader, sha256_of
from .uploads import ImportPathError, resolve_import_path

log = logging.getLogger(__name__)


def _copy_import(slide: Slide) -> None:
    # Imports are copied into media storage: workers on other machines read the same copy, and
    # a later change on the lab's share cannot alter a slide that was already analysed.
    source = resolve_import_path(slide.import_path, slide.experiment.lab)
    with open(source, "rb") as fh:
        slide.file.save(source.name, File(fh), save=False)
    Slide.objects.filter(pk=slide.pk).update(file=slide.file.name)


@shared_task(name="experiments.cpu.validate_slide")
def validate_slide(slide_id: int) -> str:
    """Make a pending slide ready or invalid. Safe to run twice: a decided slide is left alone."""
    slide = Slide.objects.select_related("experiment").filter(pk=slide_id).first()
    if slide is None or slide.status != Slide.Status.PENDING:
        return "skipped"
    try:
        if slide.source == Slide.Source.IMPORT and not slide.file:
            _copy_import(slide)
        path = slide.file.path
        with SlideReader(path) as reader:
            if reader.needs_pyramid:
                path = _convert(slide, reader)
        with SlideReader(path) as reader:
            info = reader.info
            thumbnail = reader.thumbnail(512)
        digest = sha256_of(path)
    except (SlideFileError, ImportPathError) as exc:
        return _mark_invalid(slide, str(exc))
    except Exception as exc:  # a bug or a storage failure: still tell the user, keep the trace
        log.exception("validating slide %s failed", slide_id)
        return _mark_invalid(slide, f"The slide could not be checked because of an internal error ({type(exc).__name__}). Ask an admin to look at the worker log.")

    buffer = io.BytesIO()
    thumbnail.save(buffer, format="PNG")
    slide.thumbnail.save("thumbnail.png", ContentFile(buffer.getvalue()), save=False)
    slide.sha256 = digest
    slide.size_bytes = slide.file.size
    slide.vendor = info.vendor
    slide.width, slide.height = info.width, info.height
    slide.level_count = info.level_count
    slide.mpp = info.mpp
    slide.objective_power = info.objective_power
    slide.status = Slide.Status.READY
    slide.error = ""
    slide.validated_at = timezone.now()
    slide.save()
    return "ready"


# Its name before task names said their queue. Messages sent under it before an upgrade may still
# wait in the cpu queue: a worker that knows the name checks those slides instead of dropping
# the messages as unregistered. Nothing sends it any more; it can go once no such message is left.
validate_slide_before_rename = shared_task(name="experiments.validate_slide")(validate_slide.run)


def _convert(slide: Slide, reader: SlideReader) -> str:
    """Replace the stored file by a pyramidal copy (experiments/pyramids.py); its new path.

    Safe to repeat: the copy is written beside the original, then the row points at it, and
    only then is the original removed, so a worker killed at any point leaves a readable file
    the row points at, and the next check converts again.
    """
    info = reader.info
    if info.width * info.height > MAX_CONVERT_PIXELS:
        raise SlideFileError(
            f"This slide is {reader.describe()} with no smaller level (no pyramid). Histo-IA converts such "
            f"files up to {MAX_CONVERT_PIXELS / 1e6:,.0f} Mpx; convert this one to a pyramidal tiled TIFF "
            "with the scanner's software (or: vips tiffsave in.tif out.tif --tile --pyramid) and add it again.")
    original = Path(slide.file.path)
    original_digest = sha256_of(original)
    target = original.with_name(original.stem + ("-pyramid" if original.suffix.lower() in (".tif", ".tiff") else "") + ".tiff")
    convert_to_pyramid(original, target, info.mpp)
    note = (f"Converted when checked from {reader.describe()} without a pyramid (sha256 {original_digest}) "
            "into a pyramidal tiled TIFF, lossless; the original file was then removed.")
    name = str(Path(slide.file.name).with_name(target.name))
    Slide.objects.filter(pk=slide.pk).update(file=name, conversion=note)
    slide.file.name, slide.conversion = name, note
    original.unlink(missing_ok=True)
    log.info("slide %s converted to a pyramid: %s", slide.pk, name)
    return str(target)


def _mark_invalid(slide: Slide, message: str) -> str:
    Slide.objects.filter(pk=slide.pk).update(
        status=Slide.Status.INVALID, error=message, validated_at=timezone.now(),
        size_bytes=slide.file.size if slide.file and slide.file.storage.exists(slide.file.name) else None,
    )
    return "invalid"
