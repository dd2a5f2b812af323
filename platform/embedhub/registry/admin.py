from django.contrib import admin

from embedhub.registry.models import EmbeddingModel, ModelVersion


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "created_at"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "model", "version", "parent", "status", "dimension", "drift_norm"]
    list_filter = ["model", "status"]
    exclude = ["drift"]
