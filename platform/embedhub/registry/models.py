from django.conf import settings
from django.db import models
from pgvector.django import VectorField

from embedhub.core.models import BaseModel


class EmbeddingModel(BaseModel):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersion(BaseModel):
    class Status(models.TextChoices):
        TRAINING = "training"
        READY = "ready"
        FAILED = "failed"
        ARCHIVED = "archived"

    class Visibility(models.TextChoices):
        SHARED = "shared"  # every account may use it
        PRIVATE = "private"  # its owner and staff only, until staff publish it

    model = models.ForeignKey(EmbeddingModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    artifact_path = models.CharField(max_length=1024)
    source = models.CharField(max_length=1024, blank=True, help_text="Hub id or path it came from")
    dimension = models.PositiveIntegerField()
    pooling = models.CharField(max_length=16, default="mean")
    normalize = models.BooleanField(default=True)
    max_tokens = models.PositiveIntegerField(default=256)
    query_prefix = models.CharField(max_length=200, blank=True, default="")
    document_prefix = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY)
    # QDC: mean over this version's training queries of f_self(q) - f_parent(q).
    drift = VectorField(null=True, blank=True)
    drift_norm = models.FloatField(null=True, blank=True)
    # The learned compensation adapter (workers.ml.adapter): a map from this version's space
    # to its parent's, in a file beside the weights; `adapter` holds how it was chosen
    # (method, ridge lambda, held-out numbers, what it was fitted on). Empty: none fitted.
    adapter_path = models.CharField(max_length=1024, blank=True, default="")
    adapter = models.JSONField(default=dict, blank=True)
    training_params = models.JSONField(default=dict, blank=True)
    provenance = models.JSONField(default=dict, blank=True)
    loss_curve = models.JSONField(default=list, blank=True)
    # Null for versions the system or staff registered. Deleting an account leaves its
    # private versions to staff: indexes and children may still depend on them.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="model_versions",
    )
    # Private unless registered as shared: a version nobody decided to share stays hidden.
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PRIVATE
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="modelversion_model_version")
        ]
        ordering = ["model__name", "version"]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"


class RegistrySettings(models.Model):
    """Staff settings of the registry: one row (pk 1), edited in the Django admin."""

    SINGLETON = 1

    # PROTECT: the version new indexes are built with cannot vanish from under the setting.
    default_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={
            "visibility": ModelVersion.Visibility.SHARED,
            "status": ModelVersion.Status.READY,
        },
        help_text="what an embed job uses when it names no model_version (a shared, ready "
        "version); empty: the bundled base model",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "registry settings"
        verbose_name_plural = "registry settings"

    def __str__(self) -> str:
        return "Registry settings"
