from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("health/", views.health, name="health"),
    path("corpora/", views.corpus_list, name="corpus-list"),
    path("corpora/upload/", views.corpus_upload, name="corpus-upload"),
    path("corpora/<int:corpus_id>/", views.corpus_detail, name="corpus-detail"),
    path("corpora/<int:corpus_id>/quarantine/", views.corpus_quarantine, name="corpus-quarantine"),
    path(
        "corpora/<int:corpus_id>/quarantine/<int:document_id>/",
        views.quarantine_decide,
        name="quarantine-decide",
    ),
    path(
        "corpora/<int:corpus_id>/screening/",
        views.corpus_screening_settings,
        name="corpus-screening",
    ),
    path(
        "corpora/<int:corpus_id>/policy/",
        views.corpus_policy_settings,
        name="corpus-policy-settings",
    ),
    path("indexes/<int:index_id>/activate/", views.index_activate, name="index-activate"),
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/start/", views.job_start, name="job-start"),
    path("jobs/<int:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<int:job_id>/retry/", views.job_retry, name="job-retry"),
    path("models/", views.model_list, name="model-list"),
    path("evaluations/", views.evaluation_list, name="evaluation-list"),
    path("evaluations/forgetting/", views.forgetting_matrix, name="forgetting-matrix"),
    path("audits/", views.audit_list, name="audit-list"),
    path("audits/<int:audit_id>/", views.audit_detail, name="audit-detail"),
    path("search/", views.search, name="search"),
]
