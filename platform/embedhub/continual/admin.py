from django.contrib import admin

from embedhub.continual.models import GateResult


@admin.register(GateResult)
class GateResultAdmin(admin.ModelAdmin):
    """Verdicts are written by gated reindex jobs only; the admin shows them."""

    list_display = [
        "id",
        "model_version",
        "corpus",
        "query_set",
        "passed",
        "new_value",
        "active_value",
        "tolerance",
        "job",
        "updated_at",
    ]
    list_filter = ["passed"]
    list_select_related = ["model_version__model", "corpus", "query_set", "job"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
