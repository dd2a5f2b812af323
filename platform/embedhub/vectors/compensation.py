"""Query Drift Compensation (Goswami et al. 2025): a query encoded by version T searches an
index built by its ancestor k as normalize(f_T(q) - sum of the drift vectors of versions
k+1..T). Old indexes stay usable the moment a new version exists.

compensation "adapter" applies the learned adapters instead (workers.ml.adapter), chained
T → … → k as one affine map: at each version its adapter for the index's corpus where its
fine-tune fitted one into a version on the way (adapter_hops), else its map to its
parent's space."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from embedhub.core.errors import ApplicationError
from embedhub.registry.encoders import encoder_for
from embedhub.registry.models import ModelVersion
from embedhub.vectors.models import VectorIndex
from workers.ml.adapter import Adapter, chain
from workers.ml.drift import compensate

COMPENSATIONS = ("auto", "qdc", "adapter", "none")
# The refusals of a query version for an index: unrelated versions, or the drift vectors or
# adapters the compensation needs missing or of another width (a request names the version).
VERSION_REFUSALS = frozenset(
    {
        "incompatible_version",
        "no_drift_vector",
        "incompatible_drift",
        "no_adapter",
        "incompatible_adapter",
    }
)


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


def _drift_fits(*, deltas: list[np.ndarray], dimension: int, index: VectorIndex, version) -> None:
    """Refuse QDC when the drift vectors are not as wide as the index's vectors (an index
    built with a test encoder of another width than the model's)."""
    if any(delta.shape[-1] != dimension for delta in deltas):
        raise ApplicationError(
            f"index {index.pk} holds {dimension}-dimensional vectors but the drift vectors "
            f'of {version} have {deltas[0].shape[-1]}: QDC cannot apply; use compensation "none"',
            code="incompatible_drift",
        )


def _adapters_stored(versions: list[ModelVersion]) -> None:
    """Refuse a path through a version with no adapter to its parent's space."""
    missing = [str(v) for v in versions if not v.adapter_path]
    if missing:
        raise ApplicationError(
            f"no compensation adapter stored for {', '.join(missing)} (fine-tuned before "
            'adapters existed, or its fit found no pairs); use compensation "qdc" or "none"',
            code="no_adapter",
        )


def _corpus_entry(*, version: ModelVersion, corpus_id: int) -> dict | None:
    """What `version`'s fine-tune recorded of the adapter it fitted for this corpus
    (workers.ml.adapter.fit_corpus_adapter): its file and the version it maps into."""
    return (version.adapter or {}).get("per_corpus", {}).get(str(corpus_id))


def adapter_hops(*, path: list[ModelVersion], index: VectorIndex) -> list[tuple]:
    """[(version, its corpus adapter entry or None), …] from path[0] to the index's version.

    Each hop takes the version's own adapter for the index's corpus where it maps into a
    version still on the way (it knows the corpus's documents and whether the child or the
    parent ranks them better), else the version's adapter to its parent's space. So v3's
    queries on v1's index, where v3 fitted this corpus into v2's index and v2 fitted it into
    v1's, go through both corpus adapters, not the chain fitted on the training tasks."""
    ahead = {v.pk: i for i, v in enumerate(path)} | {index.model_version_id: len(path)}
    hops, i = [], 0
    while i < len(path):
        entry = _corpus_entry(version=path[i], corpus_id=index.corpus_id)
        target = ahead.get(entry.get("target_version")) if entry else None
        if target is not None and target > i:
            hops.append((path[i], entry))
            i = target
        else:
            hops.append((path[i], None))
            i += 1
    return hops


def adapter_for(*, path: list[ModelVersion], index: VectorIndex) -> tuple[Adapter, str]:
    """(the map for queries of path[0] on `index`, "corpus", "version" or "corpus+version":
    which kinds of adapter its hops used)."""
    hops = adapter_hops(path=path, index=index)
    _adapters_stored([version for version, entry in hops if entry is None])
    adapters = []
    for version, entry in hops:
        file = str(Path(version.artifact_path) / entry["file"]) if entry else version.adapter_path
        adapters.append(_adapter_load(file, _mtime(file)))
    scopes = {"corpus" if entry else "version" for _, entry in hops}
    return chain(adapters), "+".join(sorted(scopes))


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        raise ApplicationError(
            f'the compensation adapter file {path} is missing; use compensation "qdc" or "none"',
            code="no_adapter",
        ) from None


@functools.lru_cache(maxsize=64)
def _adapter_load(path: str, mtime: float) -> Adapter:
    # Keyed by mtime too: a file rewritten in place is read again, not served stale.
    return Adapter.from_bytes(Path(path).read_bytes())


def compensation_path_check(
    *, path: list[ModelVersion], compensation: str, index: VectorIndex | None = None
) -> None:
    """Refuse up front what query_vectors would refuse for this path: a version without
    the drift vector (QDC) or one not as wide as `index`'s vectors, or a version without
    the adapter it needs (a corpus adapter for `index` will do)."""
    if not path:
        return
    if compensation in ("auto", "qdc"):
        deltas = drift_deltas(path)
        if index is not None:
            _drift_fits(deltas=deltas, dimension=index.dimension, index=index, version=path[0])
    elif compensation == "adapter":
        hops = [(v, None) for v in path] if index is None else adapter_hops(path=path, index=index)
        _adapters_stored([version for version, entry in hops if entry is None])


def _applied(path: list, compensation: str) -> str:
    if not path or compensation == "none":
        return "none"
    return "qdc" if compensation == "auto" else compensation


def _adapt(
    vectors: np.ndarray, *, path: list[ModelVersion], index: VectorIndex
) -> tuple[np.ndarray, str]:
    adapter, scope = adapter_for(path=path, index=index)
    if adapter.dimension != vectors.shape[-1]:
        raise ApplicationError(
            f"index {index.pk} holds {vectors.shape[-1]}-dimensional vectors but the "
            f"adapters of {path[0]} map {adapter.dimension}: the adapter cannot apply; "
            'use compensation "none"',
            code="incompatible_adapter",
        )
    return adapter.apply(vectors), scope


def query_vectors(
    *,
    index: VectorIndex,
    texts: list[str],
    model_version: ModelVersion | None = None,
    compensation: str = "auto",
) -> tuple[np.ndarray, dict]:
    """Encode queries with `model_version` (default: the index's) for this index, on the
    index's runtime (an int8 index is searched with int8 queries, as it was measured).

    compensation "auto" means QDC when the versions differ, nothing otherwise; "adapter"
    the learned adapters (the info's "adapter" says whether the corpus's own or the version
    chain answered).
    """
    if compensation not in COMPENSATIONS:
        raise ApplicationError(f"compensation: must be one of {list(COMPENSATIONS)}")
    version = model_version or index.model_version
    path = drift_path(query_version=version, index_version=index.model_version)
    applied = _applied(path, compensation)
    encoder = encoder_for(model_version=version, override=index.encoder, runtime=index.runtime)
    vectors = encoder.encode(texts, kind="query")
    if applied == "qdc":
        deltas = drift_deltas(path)
        _drift_fits(deltas=deltas, dimension=vectors.shape[-1], index=index, version=version)
        vectors = compensate(vectors, deltas)
    scope = None
    if applied == "adapter":
        vectors, scope = _adapt(vectors, path=path, index=index)
    info = {
        "model_version": version.pk,
        "compensation": applied,
        "adapter": scope,
        "drift_steps": len(path),
        "runtime": index.runtime,
    }
    return vectors, info
