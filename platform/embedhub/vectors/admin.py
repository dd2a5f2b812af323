from django.contrib import admin

from embedhub.vectors.models import VectorIndex


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
