"""The REST API, mounted at /api/v1/ (namespace "api"); schema and docs at /api/schema/ and /api/docs/.

API views are exempt from LoginRequiredMiddleware's redirect to the login page: DRF authenticates
them itself (token or session) and answers 401/403 in JSON instead.
"""

from django.contrib.auth.decorators import login_not_required
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from experiments.api import ExperimentViewSet, SlideViewSet
from predictions.api import PipelineViewSet, PredictionViewSet, QueueView, RegisteredModelViewSet, WorkersView
from predictions.regions_api import RunRegionsView

app_name = "api"


class Router(DefaultRouter):
    # No ".json" suffix routes: results.csv is a path of its own.
    include_format_suffixes = False

    def get_api_root_view(self, api_urls=None):
        # The root lists the queue and workers views too, not only the registered viewsets.
        root = {prefix: self.routes[0].name.format(basename=basename) for prefix, _, basename in self.registry}
        return self.APIRootView.as_view(api_root_dict={**root, "queue": "queue", "workers": "workers"})


router = Router()
router.register("experiments", ExperimentViewSet, basename="experiment")
router.register("slides", SlideViewSet, basename="slide")
router.register("pipelines", PipelineViewSet, basename="pipeline")
router.register("models", RegisteredModelViewSet, basename="registeredmodel")
router.register("predictions", PredictionViewSet, basename="prediction")

urlpatterns = [
    path("queue/", QueueView.as_view(), name="queue"),
    path("workers/", WorkersView.as_view(), name="workers"),
    path("predictions/<int:pk>/results.csv", PredictionViewSet.as_view({"get": "results_csv"}),
         name="prediction-results-csv"),
    path("predictions/<int:pk>/runs/<int:run_id>/tiles.csv", PredictionViewSet.as_view({"get": "tiles_csv"}),
         name="prediction-tiles-csv"),
    path("predictions/<int:pk>/runs/<int:run_id>/regions.geojson", RunRegionsView.as_view(),
         name="prediction-regions-geojson"),
    *router.urls,
]

# The schema and the interactive docs (mounted by histoia/urls.py under /api/). They describe the
# API only (no lab data) and are readable without logging in. The docs page loads Swagger UI's
# start-up script from itself (docs/?script) and its page styles from a file, since the
# Content-Security-Policy (settings) refuses inline scripts and styles.
docs_urlpatterns = [
    path("schema/", login_not_required(SpectacularAPIView.as_view()), name="api-schema"),
    path("docs/", login_not_required(SpectacularSwaggerSplitView.as_view(
        url_name="api-schema", template_name="api/swagger_ui.html")), name="api-docs"),
]

for pattern in urlpatterns:
    login_not_required(pattern.callback)
