from django.urls import path

from . import viewer, views

app_name = "experiments"

urlpatterns = [
    path("", views.experiment_list, name="list"),
    path("new/", views.experiment_create, name="create"),
    path("<int:pk>/", views.experiment_detail, name="detail"),
    path("<int:pk>/edit/", views.experiment_edit, name="edit"),
    path("<int:pk>/delete/", views.experiment_delete, name="delete"),
    path("<int:pk>/slides/", views.experiment_slides, name="slides"),
    path("<int:pk>/upload/", views.slide_upload, name="upload"),
    path("<int:pk>/import/", views.slide_import, name="import"),
    path("slides/<int:pk>/stain/", views.slide_stain, name="slide_stain"),
    path("slides/<int:pk>/delete/", views.slide_delete, name="slide_delete"),
    path("slides/<int:pk>/thumbnail.png", views.slide_thumbnail, name="thumbnail"),
    path("slides/<int:pk>/viewer/", viewer.slide_viewer, name="viewer"),
    path("slides/<int:pk>/slide.dzi", viewer.slide_dzi, name="slide_dzi"),
    path("slides/<int:pk>/dzi/<int:level>/<int:col>_<int:row>.jpeg", viewer.slide_tile, name="slide_tile"),
]
