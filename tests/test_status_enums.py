"""Status enums are written one way: a module-level TextChoices with a docstring, its values the
lower-case words the API and the filters use, reached from each model as Model.Status
(Slide.Status.READY, Prediction.Status.RUNNING, SlideRun.Status.FAILED)."""

import inspect

from django.db import models

from experiments.models import Slide
from predictions.models import Prediction, SlideRun


def test_every_status_field_takes_its_choices_from_its_models_status_enum():
    for model in (Slide, Prediction, SlideRun):
        enum = model.Status
        assert issubclass(enum, models.TextChoices), model
        assert enum.__qualname__ == enum.__name__, f"{enum.__qualname__} is nested in a class"
        assert inspect.getdoc(enum), enum
        assert model._meta.get_field("status").choices == enum.choices, model
        assert all(value.isalpha() and value.islower() and label[0].isupper() for value, label in enum.choices)
    assert Prediction.Status is SlideRun.Status   # a prediction and its slides share their states
