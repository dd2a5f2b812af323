from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

api_v1 = [
    path("", include("embedhub.corpora.urls")),
    path("", include("embedhub.registry.urls")),
    path("", include("embedhub.registry.training_urls")),
    path("", include("embedhub.vectors.urls")),
    path("", include("embedhub.jobs.urls")),
    path("", include("embedhub.evaluation.urls")),
    path("", include("embedhub.audits.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include(api_v1)),
    path("", include("embedhub.ops.urls")),  # /metrics
    path("", include("dashboard.urls")),
]
