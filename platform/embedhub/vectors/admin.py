from django.contrib import admin

from embedhub.vectors.models import ServingPolicy, VectorIndex


@admin.register(VectorIndex)
class VectorIndexAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "corpus",
        "model_version",
        "state",
        "runtime",
        "vector_count",
        "table_name",
        "built_at",
    ]
    list_filter = ["state", "runtime"]


@admin.register(ServingPolicy)
class ServingPolicyAdmin(admin.ModelAdmin):
    list_display = ["corpus", "index", "query_version", "compensation", "metric", "decided_at"]
    list_filter = ["compensation"]
