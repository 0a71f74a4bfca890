"""The GeoJSON export in the REST API: GET /api/v1/predictions/{id}/runs/{run_id}/regions.geojson

A view of its own, ready to be routed in histoia/api_urls.py (one line, see below); it answers
exactly what the page's download does (predictions.regions.regions_response: a streamed document
when the run has per-nucleus detections), found through the prediction's lab like every other
API object: another lab's prediction or run is 404.

    path("predictions/<int:pk>/runs/<int:run_id>/regions.geojson", RunRegionsView.as_view(),
         name="prediction-regions-geojson"),
"""

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from . import regions
from .models import Prediction, SlideRun
from .pipelines import installed


class GeoJSONRenderer(JSONRenderer):
    media_type = "application/geo+json"
    format = "geojson"


def _export_option_parameters() -> list[OpenApiParameter]:
    """The installed pipelines' export options, as query parameters (each says whose it is)."""
    kinds = {"int": OpenApiTypes.INT, "float": OpenApiTypes.FLOAT, "bool": OpenApiTypes.BOOL}
    found: dict[str, OpenApiParameter] = {}
    for (name, version), code in sorted(installed().items()):
        for param in code.export_options:
            bounds = f" ({param.min:g} to {param.max:g})" if param.min is not None and param.max is not None else ""
            found.setdefault(param.name, OpenApiParameter(
                param.name, kinds.get(param.type, OpenApiTypes.STR),
                description=f"{name}: {param.help}{bounds}, default {param.default}."))
    return list(found.values())


class RunRegionsView(APIView):
    """A finished slide's regions as a GeoJSON FeatureCollection that QuPath imports."""

    renderer_classes = [GeoJSONRenderer, JSONRenderer]

    @extend_schema(
        summary="A slide's result regions as GeoJSON (QuPath import)", tags=["results"],
        operation_id="predictions_regions_geojson",
        description="Features in level-0 pixels (origin top-left, y down), each with QuPath's `objectType` "
                    "(`annotation` or `detection`), `classification` {name, color} and numeric `measurements`, as "
                    "the run's pipeline declares them: tissue regions, or one detection per analysed tile (its "
                    "tile-table columns as measurements, classified when the pipeline classifies tiles) and one "
                    "region per class of tiles. A run that keeps every object (e.g. every nucleus: centroid and "
                    "area) also has one detection per object: a 12-sided polygon of the object's area around its "
                    "centroid, with `Area px^2` and `Area µm^2` (with a pixel size); that document is streamed, "
                    "and `histoia.objects` says how many objects it holds. 404 until the slide's run has succeeded.",
        parameters=[
            OpenApiParameter("run_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="The slide run's id (`runs[].id`)."),
            *_export_option_parameters(),
            OpenApiParameter("detections", OpenApiTypes.BOOL, description="0 leaves out the detections: per tile "
                             "and per nucleus (regions only)."),
        ],
        responses={(200, "application/geo+json"): OpenApiTypes.OBJECT,
                   400: OpenApiResponse(description="A bad export option: `{\"<option>\": [\"...\"]}`"),
                   404: OpenApiResponse(description="Not found, not finished, or not in one of your labs.")},
    )
    def get(self, request, pk, run_id):
        prediction = get_object_or_404(Prediction.objects.for_user(request.user), pk=pk)
        run = get_object_or_404(SlideRun.objects.select_related("slide", "prediction__pipeline", "prediction__model"),
                                prediction=prediction, pk=run_id)
        return regions.regions_response(request, run)
