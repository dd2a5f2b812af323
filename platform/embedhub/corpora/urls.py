from django.urls import path

from embedhub.corpora import apis

urlpatterns = [
    path("corpora/", apis.CorpusListCreateApi.as_view(), name="corpus-list"),
    path("corpora/upload/", apis.CorpusNewUploadApi.as_view(), name="corpus-upload-new"),
    path("corpora/<int:corpus_id>/", apis.CorpusDetailApi.as_view(), name="corpus-detail"),
    path("corpora/<int:corpus_id>/upload/", apis.CorpusUploadApi.as_view(), name="corpus-upload"),
    path(
        "corpora/<int:corpus_id>/documents/",
        apis.DocumentListApi.as_view(),
        name="corpus-documents",
    ),
    path(
        "corpora/<int:corpus_id>/documents/<path:external_id>/",
        apis.DocumentDetailApi.as_view(),
        name="corpus-document-detail",
    ),
]
