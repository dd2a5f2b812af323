from django.urls import path

from embedhub.evaluation import apis

urlpatterns = [
    path("query-sets/", apis.QuerySetListCreateApi.as_view(), name="query-set-list"),
    path(
        "query-sets/<int:query_set_id>/", apis.QuerySetDetailApi.as_view(), name="query-set-detail"
    ),
    path("eval-runs/", apis.EvalRunListApi.as_view(), name="eval-run-list"),
    path("eval-runs/<int:eval_run_id>/", apis.EvalRunDetailApi.as_view(), name="eval-run-detail"),
]
