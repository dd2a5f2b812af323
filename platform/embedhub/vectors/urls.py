from django.urls import path

from embedhub.vectors import apis

urlpatterns = [
    path("indexes/", apis.IndexListApi.as_view(), name="index-list"),
    path("indexes/<int:index_id>/", apis.IndexDetailApi.as_view(), name="index-detail"),
    path(
        "indexes/<int:index_id>/activate/", apis.IndexActivateApi.as_view(), name="index-activate"
    ),
    path("search/", apis.SearchApi.as_view(), name="search"),
    path(
        "corpora/<int:corpus_id>/policy/",
        apis.ServingPolicyApi.as_view(),
        name="corpus-serving-policy",
    ),
]
