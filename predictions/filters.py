"""Filters of the history page (and the API's prediction list)."""

import django_filters
from django.contrib.auth import get_user_model

from experiments.models import Experiment

from .models import Pipeline, Prediction, Status


def _experiments(request):
    return Experiment.objects.for_user(request.user) if request else Experiment.objects.none()


def _users(request):
    if request is None:
        return get_user_model().objects.none()
    return get_user_model().objects.filter(labs__members=request.user).distinct().order_by("username")


def _pipeline_names():
    # A callable: read at each request, so a pipeline added later appears without a restart.
    return [(n, n) for n in sorted(set(Pipeline.objects.values_list("name", flat=True)))]


class PredictionFilter(django_filters.FilterSet):
    experiment = django_filters.ModelChoiceFilter(queryset=_experiments)
    pipeline = django_filters.ChoiceFilter(field_name="pipeline__name", label="Pipeline", choices=_pipeline_names)
    status = django_filters.ChoiceFilter(choices=Status.choices)
    user = django_filters.ModelChoiceFilter(field_name="triggered_by", queryset=_users, label="Started by")
    date_from = django_filters.DateFilter(field_name="created_at", lookup_expr="date__gte", label="From")
    date_to = django_filters.DateFilter(field_name="created_at", lookup_expr="date__lte", label="To")

    class Meta:
        model = Prediction
        fields = ["experiment", "pipeline", "status", "user", "date_from", "date_to"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.form.fields.values():
            field.widget.attrs.setdefault("data-autosubmit", True)  # a change submits (static/js/histoia.js)
