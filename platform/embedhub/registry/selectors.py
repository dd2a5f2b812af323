"""Reads on the registry. Models and versions are shared by every user."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from embedhub.core.errors import ApplicationError, NotFound
from embedhub.registry.models import EmbeddingModel, ModelVersion

# The drift vector is 384+ floats; listings never need it.
_LIGHT = ("drift",)


def model_list() -> QuerySet[EmbeddingModel]:
    versions = ModelVersion.objects.defer(*_LIGHT).select_related("model").order_by("version")
    return EmbeddingModel.objects.prefetch_related(Prefetch("versions", queryset=versions))


def model_version_list(
    *, model: str | None = None, status: str | None = None
) -> QuerySet[ModelVersion]:
    qs = ModelVersion.objects.defer(*_LIGHT).select_related("model")
    if model:
        qs = qs.filter(model__name=model)
    if status:
        qs = qs.filter(status=status)
    return qs


def model_version_get(*, version_id: int) -> ModelVersion:
    version = (
        ModelVersion.objects.defer(*_LIGHT).select_related("model").filter(pk=version_id).first()
    )
    if version is None:
        raise NotFound(f"model version {version_id} not found")
    return version


def model_version_resolve(*, version_id: int) -> ModelVersion:
    """A ready version that a job, a search or an evaluation may use.

    Versions are shared by every user today; this is the one place that will scope them.
    """
    version = ModelVersion.objects.select_related("model").filter(pk=version_id).first()
    if version is None:
        raise NotFound(f"model version {version_id} not found")
    if version.status != ModelVersion.Status.READY:
        raise ApplicationError(
            f"model version {version_id} ({version}) is {version.status}, not ready",
            code="version_not_ready",
        )
    return version


def model_version_ancestors(*, version: ModelVersion) -> list[ModelVersion]:
    """Parent first, root last. Lineages are short (one step per fine-tune)."""
    chain: list[ModelVersion] = []
    seen = {version.pk}
    current = version
    while current.parent_id and current.parent_id not in seen:
        current = (
            ModelVersion.objects.defer(*_LIGHT).select_related("model").get(pk=current.parent_id)
        )
        seen.add(current.pk)
        chain.append(current)
    return chain


def model_version_children(*, version: ModelVersion) -> QuerySet[ModelVersion]:
    return version.children.defer(*_LIGHT).select_related("model").order_by("version")
