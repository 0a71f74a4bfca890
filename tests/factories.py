"""factory_boy factories for the rows most tests need: labs, their members, experiments, slides,
predictions and their slide runs.

Slides are real: a copy of one of the shared slides (../shared/data/slides, the CMU H&E slide by
default) stored like an upload and checked by the validation task's own body, so a slide row has
the sha256, size, dimensions and thumbnail of its file, or the status and message a user would
see for a bad one.

Pipelines are not made here. Their rows are synced from the code after every migrate, so a test
uses the current row of a real pipeline by name (`pipeline_row`), never an invented one.
"""

import factory
from django.contrib.auth import get_user_model
from django.core.files import File
from factory.django import DjangoModelFactory

from experiments.models import Experiment, Lab, Slide
from predictions.models import Pipeline, Prediction, SlideRun
from tests.conftest import CMU_SLIDE, PASSWORD


def pipeline_rows() -> dict[str, Pipeline]:
    """Every pipeline's row that its code in this checkout stands for: its newest installed
    version, in the app's own version order. Synced first, since transactional tests flush the
    rows migrate created."""
    from predictions.catalogue import sync_pipelines

    sync_pipelines()
    current = {}
    for row in Pipeline.objects.filter(installed=True).order_by("name", "-version_order", "-pk"):
        current.setdefault(row.name, row)
    return current


def pipeline_row(name: str) -> Pipeline:
    row = pipeline_rows().get(name)
    assert row is not None, f"no pipeline {name!r} is installed"
    return row


class LabFactory(DjangoModelFactory):
    class Meta:
        model = Lab

    name = factory.Sequence(lambda n: f"Lab {n}")


class MemberFactory(DjangoModelFactory):
    """A user who belongs to `lab` (a new lab unless one is given) and logs in with PASSWORD."""

    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"member{n}")
    password = factory.django.Password(PASSWORD)

    @factory.post_generation
    def lab(user, create, extracted, **kwargs):
        if create:
            (extracted or LabFactory()).members.add(user)


class ExperimentFactory(DjangoModelFactory):
    class Meta:
        model = Experiment

    name = factory.Sequence(lambda n: f"Experiment {n}")
    lab = factory.SubFactory(LabFactory)
    created_by = factory.LazyAttribute(lambda o: MemberFactory(lab=o.lab))


class SlideFactory(DjangoModelFactory):
    """A copy of `source` stored under `original_name`, then validated in-process: READY with the
    file's real metadata, or INVALID with its message (broken.svs).

    validate=False leaves it PENDING, as an upload is until a worker checks it. source=None makes
    a row with no file at all, for tests that give it a made-up geometry and never open it (pass
    its status, width, height and mpp).
    """

    class Meta:
        model = Slide

    experiment = factory.SubFactory(ExperimentFactory)
    source = CMU_SLIDE
    validate = True
    original_name = factory.LazyAttribute(lambda o: o.source.name if o.source else "slide.svs")

    @classmethod
    def _build(cls, model_class, *args, source=None, validate=True, **kwargs):
        return model_class(*args, **kwargs)

    @classmethod
    def _create(cls, model_class, *args, source=None, validate=True, **kwargs):
        from experiments.tasks import validate_slide

        slide = model_class(*args, **kwargs)
        if source is None:
            slide.save()
            return slide
        with open(source, "rb") as fh:
            slide.file.save(slide.original_name, File(fh), save=False)
        slide.save()
        if validate:
            validate_slide(slide.pk)
            slide.refresh_from_db()
        return slide


class PredictionFactory(DjangoModelFactory):
    """A prediction of the current `pipeline_name` row (tissue-area unless said) with that
    pipeline's default parameters, triggered by the experiment's creator. Its status is the
    model's default (queued) unless given."""

    class Meta:
        model = Prediction

    class Params:
        pipeline_name = "tissue-area"

    experiment = factory.SubFactory(ExperimentFactory)
    pipeline = factory.LazyAttribute(lambda o: pipeline_row(o.pipeline_name))
    params = factory.LazyAttribute(lambda o: o.pipeline.code.parse_params({}))
    model = None
    model_sha256 = factory.LazyAttribute(lambda o: o.model.sha256 if o.model else "")
    triggered_by = factory.SelfAttribute("experiment.created_by")


class SlideRunFactory(DjangoModelFactory):
    """One slide of a prediction, in the prediction's status, recording the slide's checksum and
    declared stain as a submit does. The slide is a new one of the prediction's experiment unless
    given."""

    class Meta:
        model = SlideRun

    prediction = factory.SubFactory(PredictionFactory)
    slide = factory.SubFactory(SlideFactory, experiment=factory.SelfAttribute("..prediction.experiment"))
    status = factory.SelfAttribute("prediction.status")
    slide_sha256 = factory.SelfAttribute("slide.sha256")
    declared_stain = factory.LazyAttribute(lambda o: o.slide.effective_stain)
