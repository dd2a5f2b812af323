"""Exact top-k search by inner product, in blocks so memory stays bounded.

Used for evaluation, where an approximate index would blur the quality numbers we report.
`TopK` takes the documents a block at a time (as a server-side cursor reads them), so an
index never has to fit in memory; `topk_cosine` is the same search over one matrix.
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


class TopK:
    """The k best documents per query by inner product, over document blocks that arrive
    one at a time: each block is merged into the running best, so memory holds the queries,
    k (id, score) pairs per query and one block, however many documents go by.

    Documents are named by integer ids (rows, or database ids); equal scores are ordered by
    ascending id. `exclude[i]` lists ids query i must never get. The result does not depend
    on how the documents were cut into blocks.
    """

    def __init__(
        self,
        queries: np.ndarray,
        *,
        k: int,
        exclude: list[set[int]] | None = None,
        block: int = 4096,
    ) -> None:
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        self.queries = np.asarray(queries, dtype=np.float32)
        self.k, self.block, self.seen = k, block, 0
        self._idx = np.full((len(self.queries), k), -1, dtype=np.int64)
        self._score = np.full((len(self.queries), k), -np.inf, dtype=np.float32)
        self._excluders: dict[int, list[int]] = {}
        for row, ids in enumerate(exclude or []):
            for doc in ids:
                self._excluders.setdefault(int(doc), []).append(row)
        self._excluded = np.fromiter(self._excluders, dtype=np.int64, count=len(self._excluders))

    def add(self, docs: np.ndarray, ids: np.ndarray) -> None:
        """Merge the next documents (rows of `docs`, named by `ids`) into the best so far."""
        docs = np.asarray(docs, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if len(docs) != len(ids):
            raise ValueError(f"{len(docs)} documents but {len(ids)} ids")
        for d0 in range(0, len(docs), self.block):
            self._merge(docs[d0 : d0 + self.block], ids[d0 : d0 + self.block])
        self.seen += len(docs)

    def _merge(self, docs: np.ndarray, ids: np.ndarray) -> None:
        excluded = self._excluded_in(ids)
        for q0 in range(0, len(self.queries), self.block):
            q1 = min(q0 + self.block, len(self.queries))
            scores = self.queries[q0:q1] @ docs.T
            for row, col in excluded:
                if q0 <= row < q1:
                    scores[row - q0, col] = -np.inf
            self._idx[q0:q1], self._score[q0:q1] = _top_of(
                np.concatenate([self._score[q0:q1], scores], axis=1),
                np.concatenate([self._idx[q0:q1], np.broadcast_to(ids, scores.shape)], axis=1),
                k=self.k,
            )

    def _excluded_in(self, ids: np.ndarray) -> list[tuple[int, int]]:
        """(query row, column) of every excluded document in this block."""
        if not self._excluders:
            return []
        cols = np.flatnonzero(np.isin(ids, self._excluded))
        return [(row, int(col)) for col in cols for row in self._excluders[int(ids[col])]]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), both (n_queries, min(k, documents seen)), best first; slots that
        exclusions left empty hold id -1 and score -inf."""
        k = min(self.k, self.seen)
        idx, score = self._idx[:, :k].copy(), self._score[:, :k].copy()
        idx[np.isneginf(score)] = -1
        return idx, score


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
    docs = np.asarray(docs, dtype=np.float32)
    top = TopK(queries, k=min(k, docs.shape[0]), exclude=exclude, block=block)
    top.add(docs, np.arange(docs.shape[0], dtype=np.int64))
    return top.result()
