"""Query Drift Compensation (Goswami et al. 2025): keep an old index usable by a new model.

After fine-tuning, queries encoded by the child land in a translated region of the space the
parent indexed documents in. The mean of that translation over the child's training queries,
Δ = mean(f_child(q) − f_parent(q)), needs no documents and no old-task data; subtracting the
accumulated Δ's from a new query moves it back toward where the parent would have put it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class QueryEncoder(Protocol):
    def encode(self, texts: Sequence[str], *, kind: str = "query") -> np.ndarray: ...


def drift_vector(
    *, child: QueryEncoder, parent: QueryEncoder, queries: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """Δ = mean over queries of child(q) − parent(q), both unit vectors; Δ is not normalised
    because its length is part of the correction."""
    if len(queries) == 0:
        raise ValueError("drift_vector needs at least one query")
    total: np.ndarray | None = None
    # Chunked so that a large training set never holds two full embedding matrices.
    for start in range(0, len(queries), batch_size):
        chunk = list(queries[start : start + batch_size])
        diff = np.asarray(child.encode(chunk, kind="query"), dtype=np.float64) - np.asarray(
            parent.encode(chunk, kind="query"), dtype=np.float64
        )
        part = diff.sum(axis=0)
        total = part if total is None else total + part
    return (total / len(queries)).astype(np.float32)


def drift_vector_of(*, child_vecs: np.ndarray, parent_vecs: np.ndarray) -> np.ndarray:
    """Δ from embeddings already computed (row i of both is the same query), for callers
    that need the parent's query vectors for more than Δ and encode them once."""
    child = np.asarray(child_vecs, dtype=np.float64)
    parent = np.asarray(parent_vecs, dtype=np.float64)
    if child.shape != parent.shape or len(child) == 0:
        raise ValueError("drift_vector_of needs two (n, d) matrices of the same n >= 1 queries")
    return (child - parent).mean(axis=0).astype(np.float32)


def compensate(query_vecs: np.ndarray, deltas: Sequence[np.ndarray]) -> np.ndarray:
    """normalize(q − ΣΔ) row-wise; Δ's of successive versions telescope to f_new − f_old.

    Accepts one vector (d,) or a matrix (n, d) and returns the same shape.
    """
    q = np.asarray(query_vecs, dtype=np.float32)
    shift = np.zeros(q.shape[-1], dtype=np.float32)
    for delta in deltas:
        shift += np.asarray(delta, dtype=np.float32)
    moved = q - shift
    norms = np.linalg.norm(moved, axis=-1, keepdims=True)
    # A zero vector has no direction; leave it at zero rather than produce NaNs.
    return moved / np.where(norms > 0, norms, 1.0)
