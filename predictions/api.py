"""REST API for pipelines, registered models, predictions, the queue and the workers.

Predictions are scoped through Prediction.objects.for_user(): another lab's predictions, their
results and files are 404 on every verb. Nothing here waits on Celery: submit and re-run answer
202 as soon as the prediction row is committed (the start message is sent after commit), and
progress is read from the database.
"""

from django.db.models import Prefetch, prefetch_related_objects
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema,
                                   extend_schema_view)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from histoia.api import Conflict, CSVRenderer
from histoia.pagination import Pagination
from histoia.api_filters import IdFilter

from . import monitoring, queueing, services
from .models import Pipeline, Prediction, RegisteredModel, SlideRun, Status
from .serializers import (PipelineSerializer, PredictionCreateSerializer, PredictionDetailSerializer,
                          PredictionSerializer, QueueSerializer, RegisteredModelSerializer, ResultsSerializer,
                          WorkersSerializer)

NOT_FOUND = OpenApiResponse(description="Not found, or not in one of your labs.")
FIELD_ERRORS = OpenApiResponse(description="Field errors: `{\"field\": [\"message\", ...]}`.")
CONFLICT = OpenApiResponse(description="The prediction has already ended: `{\"detail\": \"...\"}`.")

SUBMIT_EXAMPLE = OpenApiExample(
    "IHC DAB on two slides", request_only=True,
    value={"experiment": 3, "pipeline": "hematoxylin-area", "slides": [11, 12], "params": {"tile_size": 256},
           "priority": "normal"})
ACCEPTED_EXAMPLE = OpenApiExample(
    "Accepted", response_only=True, status_codes=["202"],
    value={"id": 42, "status": "queued", "status_url": "https://histoia.example/api/v1/predictions/42/",
           "pipeline": "hematoxylin-area", "pipeline_version": "1.0", "progress": 0.0, "queue_position": 1,
           "eta_seconds": 95, "trigger": "api"})
BAD_PARAM_EXAMPLE = OpenApiExample(
    "Bad parameter", response_only=True, status_codes=["400"],
    value={"params": ["Tile size (px) must be at most 2048; got 4096."]})

# The rows PredictionSerializer shows of a prediction, read with it.
PREDICTION_RELATED = ("experiment", "pipeline", "model", "triggered_by", "cancelled_by")

# Slide runs as the prediction endpoints show them: not the plan, which lists every tile of the
# slide and is polled for progress.
RUNS_WITHOUT_PLAN = Prefetch("runs", queryset=SlideRun.objects.select_related("slide").defer("plan"))


class PredictionAPIFilter(filters.FilterSet):
    """The history page's filters under the same names (experiment, pipeline, status, user,
    date_from, date_to), plus several statuses at once, trigger and the schedule's name.

    Its own filter objects, not predictions.filters.PredictionFilter's: drf-spectacular reads the
    fields of a FilterSet's base filters, which would freeze the page's per-request choices.
    """

    experiment = IdFilter(field_name="experiment_id")
    pipeline = filters.CharFilter(field_name="pipeline__name", help_text="Pipeline name, as listed at /api/v1/pipelines/.")
    status = filters.MultipleChoiceFilter(choices=Status.choices, help_text="Repeat for several statuses.")
    user = IdFilter(field_name="triggered_by_id")
    date_from = filters.DateFilter(field_name="created_at", lookup_expr="date__gte",
                                   help_text="Created on or after this day (YYYY-MM-DD).")
    date_to = filters.DateFilter(field_name="created_at", lookup_expr="date__lte",
                                 help_text="Created on or before this day (YYYY-MM-DD).")
    trigger = filters.ChoiceFilter(choices=Prediction.Trigger.choices)
    schedule = filters.CharFilter(field_name="schedule_name", help_text="Name of the schedule that started it.")

    class Meta:
        model = Prediction
        fields = ["experiment", "pipeline", "status", "user", "date_from", "date_to", "trigger", "schedule"]


class PipelineFilter(filters.FilterSet):
    name = filters.CharFilter()
    enabled = filters.BooleanFilter()

    class Meta:
        model = Pipeline
        fields = ["name", "enabled"]


@extend_schema_view(
    list=extend_schema(summary="Pipelines and their parameter schemas", tags=["pipelines"]),
    retrieve=extend_schema(summary="One pipeline version", tags=["pipelines"],
                           responses={200: PipelineSerializer, 404: NOT_FOUND}),
)
class PipelineViewSet(viewsets.ReadOnlyModelViewSet):
    """Pipeline versions installed on this server; `current` marks the one new work uses."""

    serializer_class = PipelineSerializer
    filterset_class = PipelineFilter
    queryset = Pipeline.objects.filter(installed=True).order_by("name", "-version_order", "-pk")


@extend_schema_view(
    list=extend_schema(summary="Registered models", tags=["pipelines"]),
    retrieve=extend_schema(summary="One registered model", tags=["pipelines"],
                           responses={200: RegisteredModelSerializer, 404: NOT_FOUND}),
)
class RegisteredModelViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = RegisteredModelSerializer
    queryset = RegisteredModel.objects.order_by("name", "-created_at", "-pk")
    filterset_fields = ["name", "enabled"]


@extend_schema_view(
    list=extend_schema(summary="Prediction history", tags=["predictions"],
                       description="Newest first. Filters as on the history page: experiment (id), pipeline "
                                   "(name), status (repeatable), user (id), date_from and date_to (YYYY-MM-DD, "
                                   "both included); also trigger and schedule (name)."),
    retrieve=extend_schema(summary="A prediction: status, progress per slide, queue position, ETA",
                           tags=["predictions"], responses={200: PredictionDetailSerializer, 404: NOT_FOUND}),
)
class PredictionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                        viewsets.GenericViewSet):
    filterset_class = PredictionAPIFilter

    def get_queryset(self):
        queryset = (Prediction.objects.for_user(self.request.user).select_related(*PREDICTION_RELATED)
                    .order_by("-created_at", "-pk"))
        if self.action == "retrieve":
            queryset = queryset.prefetch_related(RUNS_WITHOUT_PLAN)
        return queryset

    # results.csv and tiles.csv are routed in histoia/api_urls.py (paths ending in .csv, no slash).
    CSV_ACTIONS = ("results_csv", "tiles_csv")

    def get_renderers(self):
        if self.action in self.CSV_ACTIONS:
            return [JSONRenderer(), CSVRenderer()]
        return super().get_renderers()

    def filter_queryset(self, queryset):
        # History filters apply to the listing only, never to finding one prediction.
        return super().filter_queryset(queryset) if self.action == "list" else queryset

    def get_serializer_class(self):
        if self.action == "create":
            return PredictionCreateSerializer
        if self.action == "list":
            return PredictionSerializer
        return PredictionDetailSerializer

    def _accepted(self, prediction):
        # The prediction as the submit wrote it, with its experiment, pipeline, model and user
        # already in hand: only its runs are read. (A worker's dispatcher starts it after commit;
        # the answer says "queued" even if that has happened already.)
        prefetch_related_objects([prediction], RUNS_WITHOUT_PLAN)
        data = PredictionDetailSerializer(prediction, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["status_url"]})

    @extend_schema(
        summary="Submit a prediction", tags=["predictions"],
        description="Answers at once with 202, the prediction's id and its `status_url`; the work runs on the "
                    "workers. Poll `status_url` for progress. 400 with field errors for an unknown pipeline, a "
                    "bad parameter or a slide that is not ready.",
        request=PredictionCreateSerializer,
        responses={202: PredictionDetailSerializer, 400: FIELD_ERRORS, 429: FIELD_ERRORS},
        examples=[SUBMIT_EXAMPLE, ACCEPTED_EXAMPLE, BAD_PARAM_EXAMPLE],
    )
    def create(self, request, *args, **kwargs):
        serializer = PredictionCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            prediction = services.submit_prediction(data["experiment"], data["pipeline"], data["slides"],
                                                    data["params"], user=request.user,
                                                    trigger=Prediction.Trigger.API, priority=data["priority"])
        except services.SubmitError as exc:
            return _refused(exc)
        return self._accepted(prediction)

    @extend_schema(summary="Cancel a queued or running prediction", tags=["predictions"], request=None,
                   description="Queued work is dropped; batches already running stop at their end. 409 when the "
                               "prediction has already ended.",
                   responses={200: PredictionDetailSerializer, 404: NOT_FOUND, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        prediction = self.get_object()
        try:
            services.cancel_prediction(prediction, request.user)
        except services.CancelError as exc:
            raise Conflict(str(exc)) from exc
        prediction = self.get_queryset().prefetch_related(RUNS_WITHOUT_PLAN).get(pk=prediction.pk)
        return Response(PredictionDetailSerializer(prediction, context=self.get_serializer_context()).data)

    @extend_schema(summary="Re-run a prediction (same pipeline, slides and parameters)", tags=["predictions"],
                   request=None, responses={202: PredictionDetailSerializer, 400: FIELD_ERRORS, 404: NOT_FOUND,
                   429: FIELD_ERRORS})
    @action(detail=True, methods=["post"])
    def rerun(self, request, pk=None):
        try:
            new = services.rerun_prediction(self.get_object(), request.user)
        except services.SubmitError as exc:
            return _refused(exc)
        return self._accepted(new)

    @extend_schema(summary="Figures per slide, as JSON", tags=["results"],
                   description="The figures of each slide (names as in the README's Figures), its status and "
                               "error, and the provenance of the result. Slides not finished yet have "
                               "`metrics: null`.",
                   responses={200: ResultsSerializer, 404: NOT_FOUND})
    @action(detail=True, methods=["get"])
    def results(self, request, pk=None):
        prediction = self.get_object()
        table = services.figures_table(prediction)
        return Response({
            "prediction": prediction.pk,
            "status": prediction.status,
            "metric_names": table.names,
            "slides": [{
                "run": run.pk, "slide": run.slide_id, "slide_name": run.slide.original_name,
                "slide_sha256": run.slide_sha256, "status": run.status, "error": run.error,
                "metrics": run.metrics, "timings": run.timings or {},
                "tile_table_url": request.build_absolute_uri(
                    reverse("api:prediction-tiles-csv", kwargs={"pk": prediction.pk, "run_id": run.pk}))
                if run.tile_table else None,
            } for run in table.runs],
            "provenance": prediction.provenance(),
        })

    @extend_schema(summary="Figures per slide, as CSV", tags=["results"],
                   description="One row per slide: slide, slide_sha256, status, error, then each figure.",
                   operation_id="predictions_results_csv",
                   responses={(200, "text/csv"): OpenApiTypes.STR, 404: NOT_FOUND})
    def results_csv(self, request, pk=None):
        prediction = self.get_object()
        response = HttpResponse(services.figures_csv(prediction), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="prediction-{prediction.pk}-figures.csv"'
        return response

    @extend_schema(summary="The per-tile table of one slide, as CSV", tags=["results"],
                   parameters=[OpenApiParameter("run_id", OpenApiTypes.INT, OpenApiParameter.PATH,
                                                description="The slide run's id (`runs[].id`).")],
                   operation_id="predictions_tiles_csv",
                   responses={(200, "text/csv"): OpenApiTypes.STR, 404: NOT_FOUND})
    def tiles_csv(self, request, pk=None, run_id=None):
        prediction = self.get_object()
        run = get_object_or_404(SlideRun.objects.select_related("slide").defer("plan"), prediction=prediction,
                                pk=run_id)
        table = services.tile_table(run)
        if table is None:
            raise Http404("This slide has no tile table (yet).")
        opened, filename = table
        return FileResponse(opened, content_type="text/csv", as_attachment=True, filename=filename)


def _refused(exc) -> Response:
    """A submit the user must correct (400, on the field at fault), or one over a quota (429)."""
    code = status.HTTP_429_TOO_MANY_REQUESTS if isinstance(exc, services.QuotaExceeded) else status.HTTP_400_BAD_REQUEST
    return Response({exc.field or "non_field_errors": [str(exc)]}, status=code)


class QueueView(APIView):
    """Queued and running predictions of your labs, in the order they run, with positions and ETAs;
    paged like every list (`?page=`, `?page_size=`)."""

    @extend_schema(summary="The queue: positions and estimated times", tags=["queue"],
                   responses={200: QueueSerializer})
    def get(self, request):
        context = {"request": request}
        paginator = Pagination()
        page = paginator.paginate_queryset(queueing.waiting(request.user, load=False, recent=True), request,
                                           view=self)
        entries = queueing.with_predictions(page, related=PREDICTION_RELATED)
        # One serializer for the page (its fields are built once, not once per entry).
        predictions = PredictionSerializer([e["prediction"] for e in entries], many=True, context=context).data
        return paginator.get_paginated_response([{
            "position": e["position"], "status": e["status"], "queue": e["queue"], "eta_seconds": e["eta_seconds"],
            "estimated_without_history": e["estimated_without_history"],
            "throughput": e["throughput"].as_dict(),
            "prediction": prediction,
        } for e, prediction in zip(entries, predictions)])


class WorkersView(APIView):
    """Live workers (asked with a 1 s timeout, cached 5 s) and the number of messages in each queue.

    What each worker runs is listed by task name, as the dashboard shows it; the task ids and
    arguments (which name other labs' work) are for staff only, as on the monitoring page."""

    @extend_schema(summary="Workers and queue depths", tags=["queue"], responses={200: WorkersSerializer})
    def get(self, request):
        overview = monitoring.overview()
        if not request.user.is_staff:
            overview = {**overview, "workers": [{**w, "active": [{"name": t.get("name")} for t in w["active"]]}
                                                for w in overview["workers"]]}
        return Response(WorkersSerializer(overview).data)
