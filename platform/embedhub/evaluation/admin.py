from django.contrib import admin

from embedhub.evaluation.models import EvalRun, QuerySet


@admin.register(QuerySet)
class QuerySetAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "corpus", "owner", "created_at"]


@admin.register(EvalRun)
class EvalRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "query_set",
        "index",
        "model_version",
        "compensation",
        "mode",
        "created_at",
    ]
    exclude = ["per_query"]
