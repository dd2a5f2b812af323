from django.contrib import admin, messages

from embedhub.core.errors import ApplicationError
from embedhub.registry import services
from embedhub.registry.models import EmbeddingModel, ModelVersion, RegistrySettings


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "created_at"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "model",
        "version",
        "parent",
        "status",
        "visibility",
        "owner",
        "dimension",
        "drift_norm",
    ]
    list_filter = ["model", "status", "visibility"]
    exclude = ["drift"]
    # Sharing goes through the publish action (it checks readiness and lineage).
    readonly_fields = ["owner", "visibility"]
    actions = ["publish"]

    @admin.action(description="Publish the selected versions to every account")
    def publish(self, request, queryset):
        for version in queryset:
            try:
                services.model_version_publish(version=version, user=request.user)
            except ApplicationError as exc:
                self.message_user(request, f"{version}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{version} is shared", messages.SUCCESS)


@admin.register(RegistrySettings)
class RegistrySettingsAdmin(admin.ModelAdmin):
    """One row: the default model version for embed jobs that name none."""

    list_display = ["__str__", "default_version", "updated_at"]

    def has_add_permission(self, request):
        return super().has_add_permission(request) and not RegistrySettings.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        if obj.default_version is None:
            obj.pk = RegistrySettings.SINGLETON
            super().save_model(request, obj, form, change)  # the bundled base on next use
            return
        saved = services.registry_default_set(version=obj.default_version)
        obj.pk = saved.pk
