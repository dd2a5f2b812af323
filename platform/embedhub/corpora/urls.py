from django.urls import path

from embedhub.corpora import apis

urlpatterns = [
    path("corpora/", apis.CorpusListCreateApi.as_view(), name="corpus-list"),
    path("corpora/upload/", apis.CorpusNewUploadApi.as_view(), name="corpus-upload-new"),
    path("corpora/<int:corpus_id>/", apis.CorpusDetailApi.as_view(), name="corpus-detail"),
    path("corpora/<int:corpus_id>/upload/", apis.CorpusUploadApi.as_view(), name="corpus-upload"),
    path(
        "corpora/<int:corpus_id>/screening/",
        apis.CorpusScreeningApi.as_view(),
        name="corpus-screening",
    ),
    path(
        "corpora/<int:corpus_id>/quarantine/",
        apis.QuarantineListApi.as_view(),
        name="corpus-quarantine",
    ),
    path(
        "corpora/<int:corpus_id>/quarantine/<int:document_id>/approve/",
        apis.QuarantineDecideApi.as_view(),
        {"action": "approve"},
        name="corpus-quarantine-approve",
    ),
    path(
        "corpora/<int:corpus_id>/quarantine/<int:document_id>/reject/",
        apis.QuarantineDecideApi.as_view(),
        {"action": "reject"},
        name="corpus-quarantine-reject",
    ),
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
