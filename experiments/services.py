"""Creating slides from an upload or an import, with dispatch after commit."""

from pathlib import Path

from django.db import transaction

from .models import Experiment, Slide
from .uploads import clean_file_name, display_name, import_root


def _validate_after_commit(slide: Slide) -> None:
    from .tasks import validate_slide

    # The worker must never receive the id of a row it cannot see yet.
    transaction.on_commit(lambda: validate_slide.delay(slide.pk))


def add_upload(experiment: Experiment, uploaded_file, user) -> Slide:
    slide = Slide(
        experiment=experiment,
        original_name=display_name(uploaded_file.name),
        source=Slide.Source.UPLOAD,
        uploaded_by=user,
        size_bytes=uploaded_file.size,
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
        import_path=str(real_path.relative_to(import_root())),
        uploaded_by=user,
        size_bytes=real_path.stat().st_size,
    )
    _validate_after_commit(slide)
    return slide
