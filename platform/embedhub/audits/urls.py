from django.urls import path

from embedhub.audits import apis

urlpatterns = [
    path("audits/", apis.AuditListApi.as_view(), name="audit-list"),
    path("audits/comparison/", apis.AuditComparisonApi.as_view(), name="audit-comparison"),
    path("audits/<int:audit_id>/", apis.AuditDetailApi.as_view(), name="audit-detail"),
]
