"""How much a cheaper encoding (int8) loses against a reference one (fp32): pure compute.

Both encodings of the same documents and queries are compared two ways: the cosine of
each document's two vectors, and nDCG@10 of the same queries over the same documents
(exact search, trec_eval semantics as in workers.ml.metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from workers.ml.metrics import evaluate_run
from workers.ml.search import topk_cosine

RANK_DEPTH = 100  # the run handed to the metrics: enough for nDCG@10 with ties to spare


@dataclass(frozen=True)
class Encoded:
    """One encoding of a sample: document vectors (rows: `doc_ids`) and query vectors."""

    docs: np.ndarray
    queries: np.ndarray | None = None


def _unit(vectors: np.ndarray) -> np.ndarray:
    # Indexes search by cosine, so a model that does not normalise is compared the same way.
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def cosine_stats(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Mean, 5th percentile and minimum cosine between paired rows."""
    cosines = (_unit(reference) * _unit(candidate)).sum(axis=1)
    return {
        "mean_cosine": round(float(cosines.mean()), 5),
        "p05_cosine": round(float(np.percentile(cosines, 5)), 5),
        "min_cosine": round(float(cosines.min()), 5),
        "compared": int(len(cosines)),
    }


def ndcg_at_10(
    *,
    docs: np.ndarray,
    queries: np.ndarray,
    doc_ids: Sequence[str],
    query_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
) -> float:
    """Mean nDCG@10 of exact cosine search of `queries` over `docs`."""
    rows, scores = topk_cosine(_unit(queries), _unit(docs), k=RANK_DEPTH)
    run = {
        qid: {doc_ids[j]: float(s) for j, s in zip(row, score, strict=True) if j >= 0}
        for qid, row, score in zip(query_ids, rows.tolist(), scores, strict=True)
    }
    return evaluate_run(qrels=qrels, run=run).aggregate["ndcg@10"]


def encoding_loss(
    *,
    reference: Encoded,
    candidate: Encoded,
    doc_ids: Sequence[str] = (),
    query_ids: Sequence[str] = (),
    qrels: Mapping[str, Mapping[str, int]] | None = None,
) -> dict:
    """Cosine statistics, and with queries the nDCG@10 of each encoding and the candidate's
    delta in points (100 × difference; negative: the candidate is worse)."""
    loss = cosine_stats(reference.docs, candidate.docs)
    if not query_ids or reference.queries is None or candidate.queries is None:
        return loss
    common = {"doc_ids": doc_ids, "query_ids": query_ids, "qrels": qrels or {}}
    before = ndcg_at_10(docs=reference.docs, queries=reference.queries, **common)
    after = ndcg_at_10(docs=candidate.docs, queries=candidate.queries, **common)
    return {
        **loss,
        "ndcg@10_reference": round(before, 5),
        "ndcg@10": round(after, 5),
        "ndcg@10_delta_points": round(100 * (after - before), 3),
        "queries": len(query_ids),
    }
