"""REST API for experiments and slides (/api/v1/experiments/, /api/v1/slides/).

Every queryset goes through .for_user(): another lab's experiments and slides do not exist for
this user (404 on every verb), exactly as in the pages.
"""

from django.conf import settings
from django.http import FileResponse, Http404
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from histoia.api import JSONParser, PNGRenderer
from histoia.api_filters import IdFilter

from . import services, uploads
from .models import Experiment, Lab, Slide
from .serializers import ExperimentSerializer, SlideImportSerializer, SlideSerializer, SlideUploadSerializer

NOT_FOUND = OpenApiResponse(description="Not found, or not in one of your labs.")
NOT_A_MANAGER = OpenApiResponse(description="Only the lab's managers (and staff) may delete.")
BUSY = OpenApiResponse(description="Work is still queued or running on it: `detail` says which; cancel or wait.")


def _delete(delete, obj, user) -> Response:
    """One answer for both deletions: 204, or 409 with the reason while work is in progress."""
    try:
        delete(obj, user)
    except services.DeleteRefused as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    return Response(status=status.HTTP_204_NO_CONTENT)
FIELD_ERRORS = OpenApiResponse(description="Field errors: `{\"field\": [\"message\", ...]}`.")


class ExperimentFilter(filters.FilterSet):
    lab = filters.ModelChoiceFilter(queryset=lambda request: Lab.objects.filter(members=request.user)
                                    if request is not None else Lab.objects.none(),
                                    help_text="Only this lab's experiments (a lab id).")
    name = filters.CharFilter(lookup_expr="icontains", help_text="Name contains (case-insensitive).")

    class Meta:
        model = Experiment
        fields = ["lab", "name"]


class SlideFilter(filters.FilterSet):
    experiment = IdFilter(field_name="experiment_id", help_text="Experiment id.")
    status = filters.ChoiceFilter(choices=Slide.Status.choices)

    class Meta:
        model = Slide
        fields = ["experiment", "status"]


@extend_schema_view(
    list=extend_schema(summary="Your labs' experiments", tags=["experiments"]),
    retrieve=extend_schema(summary="One experiment", tags=["experiments"], responses={200: ExperimentSerializer,
                                                                                      404: NOT_FOUND}),
    create=extend_schema(
        summary="Create an experiment", tags=["experiments"],
        responses={201: ExperimentSerializer, 400: FIELD_ERRORS},
        examples=[OpenApiExample("New experiment", request_only=True,
                                 value={"lab": 1, "name": "Liver fibrosis, batch 7", "description": "Ki-67",
                                        "stain": "hdab"})],
    ),
    partial_update=extend_schema(summary="Rename, describe or declare the stain of an experiment", tags=["experiments"],
                                 responses={200: ExperimentSerializer, 400: FIELD_ERRORS, 404: NOT_FOUND}),
    destroy=extend_schema(summary="Delete an experiment, its slides, their files and its results (lab managers)",
                          tags=["experiments"], responses={204: None, 403: NOT_A_MANAGER, 404: NOT_FOUND, 409: BUSY}),
)
class ExperimentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                        mixins.UpdateModelMixin, viewsets.GenericViewSet):
    serializer_class = ExperimentSerializer
    filterset_class = ExperimentFilter
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def destroy(self, request, pk=None):
        return _delete(services.delete_experiment, self.get_object(), request.user)

    def get_queryset(self):
        return (services.experiments_with_counts(self.request.user).select_related("lab", "created_by")
                .order_by("-created_at", "-pk"))

    def filter_queryset(self, queryset):
        # Filters apply to the listing only, never to finding one object.
        return super().filter_queryset(queryset) if self.action == "list" else queryset

    def perform_create(self, serializer):
        serializer.save(created_by=self.request.user)

    def create(self, request, *args, **kwargs):
        response = super().create(request, *args, **kwargs)
        # Counts for the new row (annotated on reads only).
        response.data["slide_count"] = response.data["ready_slide_count"] = 0
        return response

    @extend_schema(methods=["GET"], summary="The experiment's slides", tags=["slides"],
                   responses={200: SlideSerializer(many=True), 404: NOT_FOUND})
    @extend_schema(
        methods=["POST"], summary="Upload slide files", tags=["slides"],
        description="multipart/form-data, one or more files under `files`. Each slide is then checked "
                    "on a worker: poll it until `status` is `ready` (or `invalid`, with `error`). A file over "
                    "the upload limit (SLIDE_UPLOAD_MAX_BYTES) is refused with 413 and nothing is stored.",
        request={"multipart/form-data": SlideUploadSerializer},
        responses={201: SlideSerializer(many=True), 400: FIELD_ERRORS, 404: NOT_FOUND,
                   413: OpenApiResponse(description="The upload is larger than the limit; nothing was stored.")},
    )
    @action(detail=True, methods=["get", "post"], url_path="slides",
            parser_classes=[MultiPartParser, FormParser])
    def slides(self, request, pk=None):
        experiment = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(experiment.slides.select_related("uploaded_by").order_by("original_name", "pk"))
            return self.get_paginated_response(SlideSerializer(page, many=True, context={"request": request}).data)
        # Reading the files runs the streaming upload handler, which stops at the size limit.
        files = request.FILES.getlist("files")
        if getattr(request._request, "upload_too_large", False):
            limit = settings.SLIDE_UPLOAD_MAX_BYTES
            return Response({
                "detail": f"The file is larger than the upload limit of {uploads.human_size(limit)}; nothing was "
                          "stored. Large slides can be imported from the lab's file share instead.",
                "max_bytes": limit,
            }, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        if not files:
            return Response({"files": ["Choose at least one slide file to upload (multipart field “files”)."]},
                            status=status.HTTP_400_BAD_REQUEST)
        try:
            slides = services.upload_slides(experiment, files, request.user)
        except services.StorageQuotaExceeded as exc:
            return Response({"files": [f"Nothing was stored: {exc}"]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(SlideSerializer(slides, many=True, context={"request": request}).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Import slides from the lab's file share", tags=["slides"],
        description="Copies each file (a path relative to SLIDE_IMPORT_ROOT) into Histo-IA's storage and checks "
                    "it on a worker. Paths outside the share are refused.",
        request=SlideImportSerializer,
        responses={201: SlideSerializer(many=True), 400: FIELD_ERRORS, 404: NOT_FOUND},
        examples=[OpenApiExample("Two slides", request_only=True,
                                 value={"paths": ["2026/case-01.svs", "2026/case-02.svs"]})],
    )
    @action(detail=True, methods=["post"], url_path="slides/import", parser_classes=[JSONParser])
    def import_slides(self, request, pk=None):
        experiment = self.get_object()
        serializer = SlideImportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            slides = services.import_slides(experiment, serializer.validated_data["paths"], request.user)
        except (uploads.ImportPathError, services.StorageQuotaExceeded) as exc:
            return Response({"paths": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(SlideSerializer(slides, many=True, context={"request": request}).data,
                        status=status.HTTP_201_CREATED)


@extend_schema_view(
    list=extend_schema(summary="Your labs' slides", tags=["slides"]),
    retrieve=extend_schema(summary="One slide: status, error, metadata", tags=["slides"],
                           responses={200: SlideSerializer, 404: NOT_FOUND}),
    partial_update=extend_schema(
        summary="Declare a slide's stain", tags=["slides"],
        description="Only `stain` changes: `he`, `hdab`, `other`, or empty to use the experiment's stain. "
                    "`effective_stain` is then the stain pipelines use.",
        responses={200: SlideSerializer, 400: FIELD_ERRORS, 404: NOT_FOUND},
        examples=[OpenApiExample("IHC slide", request_only=True, value={"stain": "hdab"})],
    ),
    destroy=extend_schema(
        summary="Delete a slide and its file (lab managers)", tags=["slides"],
        description="The file, thumbnail and viewer tiles are removed. A slide that results were computed from "
                    "stays listed with status `deleted`, so those results keep their provenance.",
        responses={204: None, 403: NOT_A_MANAGER, 404: NOT_FOUND, 409: BUSY}),
)
class SlideViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin,
                   viewsets.GenericViewSet):
    serializer_class = SlideSerializer
    filterset_class = SlideFilter
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def destroy(self, request, pk=None):
        return _delete(services.delete_slide, self.get_object(), request.user)

    def filter_queryset(self, queryset):
        # Filters apply to the listing only, never to finding one object.
        return super().filter_queryset(queryset) if self.action == "list" else queryset

    def get_queryset(self):
        return (Slide.objects.for_user(self.request.user).select_related("uploaded_by", "experiment")
                .order_by("-created_at", "-pk"))

    @extend_schema(summary="The slide's thumbnail (PNG)", tags=["slides"],
                   responses={(200, "image/png"): OpenApiTypes.BINARY, 404: NOT_FOUND})
    @action(detail=True, methods=["get"], renderer_classes=[JSONRenderer, PNGRenderer])
    def thumbnail(self, request, pk=None):
        slide = self.get_object()
        if not slide.thumbnail:
            raise Http404("This slide has no thumbnail yet.")
        return FileResponse(slide.thumbnail.open("rb"), content_type="image/png")
