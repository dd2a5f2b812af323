from django.urls import path

from embedhub.registry import apis

urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="model-list"),
    path("model-versions/", apis.ModelVersionListCreateApi.as_view(), name="model-version-list"),
    path(
        "model-versions/<int:version_id>/",
        apis.ModelVersionDetailApi.as_view(),
        name="model-version-detail",
    ),
    path(
        "model-versions/<int:version_id>/publish/",
        apis.ModelVersionPublishApi.as_view(),
        name="model-version-publish",
    ),
]
