from django.contrib import admin

from embedhub.jobs.models import Job, JobEvent


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    readonly_fields = ["created_at", "kind", "message", "data"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "kind",
        "status",
        "owner",
        "progress_done",
        "progress_total",
        "attempts",
        "created_at",
    ]
    list_filter = ["kind", "status", "queue"]
    search_fields = ["id", "error"]
    inlines = [JobEventInline]


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ["id", "job", "kind", "created_at"]
    list_filter = ["kind"]
