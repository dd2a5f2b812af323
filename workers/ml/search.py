"""Exact top-k search by inner product, in blocks so memory stays bounded.

Used for evaluation, where an approximate index would blur the quality numbers we report.
"""

from __future__ import annotations

import numpy as np


def _top_of(scores: np.ndarray, index: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of (scores, index), ordered by score descending then index ascending.

    The index tie-break makes results deterministic and equal to a stable argsort.
    """
    if scores.shape[1] <= k:
        return _top_of_sorted(scores, index, k=k)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_idx, top_score = _top_of_sorted(
        np.take_along_axis(scores, part, axis=1), np.take_along_axis(index, part, axis=1), k=k
    )
    # argpartition picks an arbitrary member of a tie at the k-th score (duplicate documents
    # do that): redo those rows with a full sort so the index tie-break stays exact.
    tied = np.count_nonzero(scores >= top_score[:, -1:], axis=1) > k
    if tied.any():
        top_idx[tied], top_score[tied] = _top_of_sorted(scores[tied], index[tied], k=k)
    return top_idx, top_score


def _top_of_sorted(
    scores: np.ndarray, index: np.ndarray, *, k: int
) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((index, -scores), axis=1)[:, :k]
    return np.take_along_axis(index, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _mask_excluded(
    scores: np.ndarray, exclude: list[set[int]], *, q0: int, d0: int, d1: int
) -> None:
    for row in range(scores.shape[0]):
        for doc in exclude[q0 + row]:
            if d0 <= doc < d1:
                scores[row, doc - d0] = -np.inf


def topk_cosine(
    queries: np.ndarray,
    docs: np.ndarray,
    *,
    k: int,
    exclude: list[set[int]] | None = None,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k documents for each query by inner product (cosine for unit vectors).

    Returns (indices, scores), both (n_queries, min(k, n_docs)), best first; equal scores
    are ordered by ascending document row. `exclude[i]` lists document rows query i must
    never get (ArguAna drops a query's own document); when exclusions leave fewer than k
    documents the missing slots hold index -1 and score -inf. Peak memory is about
    block * block float32 on top of the inputs, whatever their sizes.
    """
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
    queries = np.asarray(queries, dtype=np.float32)
    docs = np.asarray(docs, dtype=np.float32)
    k = min(k, docs.shape[0])
    out_idx = np.full((queries.shape[0], k), -1, dtype=np.int64)
    out_score = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
    for q0 in range(0, queries.shape[0], block):
        q1 = min(q0 + block, queries.shape[0])
        best_idx, best_score = out_idx[q0:q1], out_score[q0:q1]
        for d0 in range(0, docs.shape[0], block):
            d1 = min(d0 + block, docs.shape[0])
            scores = queries[q0:q1] @ docs[d0:d1].T
            if exclude is not None:
                _mask_excluded(scores, exclude, q0=q0, d0=d0, d1=d1)
            index = np.broadcast_to(np.arange(d0, d1, dtype=np.int64), scores.shape)
            best_idx, best_score = _top_of(
                np.concatenate([best_score, scores], axis=1),
                np.concatenate([best_idx, index], axis=1),
                k=k,
            )
        out_idx[q0:q1], out_score[q0:q1] = best_idx, best_score
    out_idx[np.isneginf(out_score)] = -1
    return out_idx, out_score
