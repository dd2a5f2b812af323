from django.contrib import admin

from embedhub.audits.models import RobustnessAudit


@admin.register(RobustnessAudit)
class RobustnessAuditAdmin(admin.ModelAdmin):
    list_display = ["id", "concept", "state", "index", "model_version", "created_at"]
    list_filter = ["state"]
