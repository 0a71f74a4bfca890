from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from histoia import api_urls

from .views import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("", RedirectView.as_view(pattern_name="predictions:dashboard", permanent=False)),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("experiments/", include("experiments.urls")),
    path("predictions/", include("predictions.urls")),
    path("api/v1/", include("histoia.api_urls", namespace="api")),
    path("api/", include(api_urls.docs_urlpatterns)),
]
