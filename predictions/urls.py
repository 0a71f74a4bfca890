from django.urls import path

from . import regions, views

app_name = "predictions"

urlpatterns = [
    path("", views.history, name="history"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/live/", views.dashboard_live, name="dashboard_live"),
    path("monitoring/", views.monitoring_page, name="monitoring"),
    path("compare/", views.compare, name="compare"),
    path("new/<int:experiment_pk>/", views.prediction_new, name="new"),
    path("<int:pk>/", views.prediction_detail, name="detail"),
    path("<int:pk>/progress/", views.prediction_progress, name="progress"),
    path("<int:pk>/cancel/", views.prediction_cancel, name="cancel"),
    path("<int:pk>/rerun/", views.prediction_rerun, name="rerun"),
    path("<int:pk>/figures.csv", views.prediction_figures_csv, name="figures_csv"),
    path("runs/<int:pk>/regions.geojson", regions.run_regions_geojson, name="run_regions"),
    path("runs/<int:pk>/overlay.json", regions.run_overlay, name="run_overlay"),
    path("runs/<int:pk>/detections.json", regions.run_detections, name="run_detections"),
    path("runs/<int:pk>/<str:name>", views.run_file, name="run_file"),
]
