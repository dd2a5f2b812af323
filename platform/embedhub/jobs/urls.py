from django.urls import path

from embedhub.jobs import apis

urlpatterns = [
    path("jobs/", apis.JobListCreateApi.as_view(), name="job-list"),
    path("jobs/<int:job_id>/", apis.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/events/", apis.JobEventsApi.as_view(), name="job-events"),
    path("jobs/<int:job_id>/cancel/", apis.JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<int:job_id>/retry/", apis.JobRetryApi.as_view(), name="job-retry"),
]
