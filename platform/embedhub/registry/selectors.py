"""Reads on the registry. Every read of versions on behalf of a user goes through
`model_version_visible`: shared versions, the user's own private ones, everything for staff.
A version the user may not see is "not found", so its id leaks nothing."""

from __future__ import annotations

from django.db.models import Prefetch, Q, QuerySet

from embedhub.core.errors import ApplicationError, NotFound
from embedhub.registry.models import EmbeddingModel, ModelVersion, RegistrySettings

# The drift vector is 384+ floats; listings never need it.
_LIGHT = ("drift",)


def model_version_visible(*, user) -> QuerySet[ModelVersion]:
    """The versions `user` may see and use."""
    qs = ModelVersion.objects.all()
    if user is None or not user.is_authenticated:  # also what schema generation sees
        return qs.none()
    if user.is_staff:
        return qs
    return qs.filter(Q(visibility=ModelVersion.Visibility.SHARED) | Q(owner=user))


def model_list(*, user) -> QuerySet[EmbeddingModel]:
    """Models with at least one version the user may see, listing only those versions."""
    visible = model_version_visible(user=user)
    versions = visible.defer(*_LIGHT).select_related("model").order_by("version")
    return (
        EmbeddingModel.objects.filter(versions__in=visible.values("pk"))
        .distinct()
        .prefetch_related(Prefetch("versions", queryset=versions))
    )


def model_version_list(*, user) -> QuerySet[ModelVersion]:
    """The versions `user` may see, light (the API's list filters by model, status and
    parent: registry.apis.ModelVersionFilter)."""
    return model_version_visible(user=user).defer(*_LIGHT).select_related("model")


def model_version_get(*, user, version_id: int) -> ModelVersion:
    version = (
        model_version_visible(user=user)
        .defer(*_LIGHT)
        .select_related("model")
        .filter(pk=version_id)
        .first()
    )
    if version is None:
        raise NotFound(f"model version {version_id} not found")
    return version


def model_version_resolve(*, user, version_id: int) -> ModelVersion:
    """A ready version that `user`'s job, search or evaluation may use: every version id a
    request names is resolved here."""
    version = model_version_visible(user=user).select_related("model").filter(pk=version_id).first()
    if version is None:
        raise NotFound(f"model version {version_id} not found")
    if version.status != ModelVersion.Status.READY:
        raise ApplicationError(
            f"model version {version_id} ({version}) is {version.status}, not ready",
            code="version_not_ready",
        )
    return version


def model_version_ancestors(*, user, version: ModelVersion) -> list[ModelVersion]:
    """Parent first, root last, up to the first one `user` may not see. Lineages are short
    (one step per fine-tune)."""
    visible = model_version_visible(user=user).defer(*_LIGHT).select_related("model")
    chain: list[ModelVersion] = []
    seen = {version.pk}
    current = version
    while current.parent_id and current.parent_id not in seen:
        current = visible.filter(pk=current.parent_id).first()
        if current is None:
            break
        seen.add(current.pk)
        chain.append(current)
    return chain


def model_version_children(*, user, version: ModelVersion) -> QuerySet[ModelVersion]:
    visible = model_version_visible(user=user).filter(parent=version)
    return visible.defer(*_LIGHT).select_related("model").order_by("version")


def registry_settings_get() -> RegistrySettings | None:
    """The staff settings row, None until the first embed job or the admin creates it."""
    return (
        RegistrySettings.objects.select_related("default_version__model")
        .filter(pk=RegistrySettings.SINGLETON)
        .first()
    )


def adapter_summary(adapter: dict) -> dict | None:
    """A version's compensation adapter as shown in lists and job results: its method and
    held-out numbers, without the per-candidate table; None when it has none."""
    if not adapter:
        return None
    summary = {k: v for k, v in adapter.items() if k not in ("candidates", "per_corpus")}
    if adapter.get("per_corpus"):
        shown = ("target_version", "index", "chosen", "document_weight", "documents", "queries")
        summary["per_corpus"] = {
            corpus: {k: entry.get(k) for k in shown}
            for corpus, entry in adapter["per_corpus"].items()
        }
    return summary
