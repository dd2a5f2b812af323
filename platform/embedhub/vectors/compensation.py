"""Query Drift Compensation (Goswami et al. 2025): a query encoded by version T searches an
index built by its ancestor k as normalize(f_T(q) - sum of the drift vectors of versions
k+1..T). Old indexes stay usable the moment a new version exists."""

from __future__ import annotations

import numpy as np

from embedhub.core.errors import ApplicationError
from embedhub.registry.encoders import encoder_for
from embedhub.registry.models import ModelVersion
from embedhub.vectors.models import VectorIndex
from workers.ml.drift import compensate

COMPENSATIONS = ("auto", "qdc", "none")


def drift_path(*, query_version: ModelVersion, index_version: ModelVersion) -> list[ModelVersion]:
    """Versions k+1..T walking parents from T up to k; refuses a version that does not
    descend from the index's."""
    path, current = [], query_version
    while current is not None and current.pk != index_version.pk:
        path.append(current)
        current = current.parent
    if current is None:
        raise ApplicationError(
            f"model version {query_version.pk} ({query_version}) does not descend from the "
            f"index's version {index_version.pk} ({index_version}): its queries cannot be "
            "compared with this index; reindex with it first",
            code="incompatible_version",
        )
    return path


def drift_deltas(path: list[ModelVersion]) -> list[np.ndarray]:
    missing = [str(v) for v in path if v.drift is None]
    if missing:
        raise ApplicationError(
            f'no drift vector stored for {", ".join(missing)}; use compensation "none"',
            code="no_drift_vector",
        )
    return [np.asarray(v.drift, dtype=np.float32) for v in path]


def query_vectors(
    *,
    index: VectorIndex,
    texts: list[str],
    model_version: ModelVersion | None = None,
    compensation: str = "auto",
) -> tuple[np.ndarray, dict]:
    """Encode queries with `model_version` (default: the index's) for this index, on the
    index's runtime (an int8 index is searched with int8 queries, as it was measured).

    compensation "auto" means QDC when the versions differ, nothing otherwise.
    """
    if compensation not in COMPENSATIONS:
        raise ApplicationError(f"compensation: must be one of {list(COMPENSATIONS)}")
    version = model_version or index.model_version
    path = drift_path(query_version=version, index_version=index.model_version)
    applied = "qdc" if path and compensation in ("auto", "qdc") else "none"
    encoder = encoder_for(model_version=version, override=index.encoder, runtime=index.runtime)
    vectors = encoder.encode(texts, kind="query")
    if applied == "qdc":
        deltas = drift_deltas(path)
        if any(delta.shape[-1] != vectors.shape[-1] for delta in deltas):
            # An index built with a test encoder of another width than the model's.
            raise ApplicationError(
                f"index {index.pk} holds {vectors.shape[-1]}-dimensional vectors but the "
                f"drift vectors of {version} have {deltas[0].shape[-1]}: QDC cannot apply; "
                'use compensation "none"',
                code="incompatible_drift",
            )
        vectors = compensate(vectors, deltas)
    info = {
        "model_version": version.pk,
        "compensation": applied,
        "drift_steps": len(path),
        "runtime": index.runtime,
    }
    return vectors, info
