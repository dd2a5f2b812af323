"""Comparing a cheaper encoding with its reference: cosine and nDCG@10 delta."""

from __future__ import annotations

import numpy as np

from workers.ml.quality import Encoded, cosine_stats, encoding_loss


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _retrieval_case(seed: int = 0):
    """20 documents; query i is a slightly moved copy of document i, its only relevant one."""
    rng = np.random.default_rng(seed)
    docs = _unit(rng.normal(size=(20, 16)).astype(np.float32))
    queries = _unit(docs[:10] + 0.05 * rng.normal(size=(10, 16)).astype(np.float32))
    doc_ids = [f"d{i}" for i in range(20)]
    query_ids = [f"q{i}" for i in range(10)]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(10)}
    return docs, queries, {"doc_ids": doc_ids, "query_ids": query_ids, "qrels": qrels}


def test_identical_encodings_lose_nothing() -> None:
    docs, queries, ids = _retrieval_case()
    same = Encoded(docs, queries)
    loss = encoding_loss(reference=same, candidate=Encoded(docs.copy(), queries.copy()), **ids)
    assert loss["mean_cosine"] == loss["min_cosine"] == 1.0
    assert loss["ndcg@10"] == loss["ndcg@10_reference"] == 1.0
    assert loss["ndcg@10_delta_points"] == 0.0 and loss["queries"] == 10


def test_a_worse_encoding_shows_as_lost_ndcg_points() -> None:
    docs, queries, ids = _retrieval_case()
    rng = np.random.default_rng(1)
    # Half the queries point elsewhere: their relevant document drops out of the top.
    worse = queries.copy()
    worse[:5] = _unit(rng.normal(size=(5, 16)).astype(np.float32))
    loss = encoding_loss(reference=Encoded(docs, queries), candidate=Encoded(docs, worse), **ids)
    assert loss["ndcg@10_reference"] == 1.0
    assert loss["ndcg@10_delta_points"] < -20
    assert loss["ndcg@10_delta_points"] == round(100 * (loss["ndcg@10"] - 1.0), 3)


def test_without_queries_only_the_cosine_is_compared() -> None:
    docs, _, _ = _retrieval_case()
    loss = encoding_loss(reference=Encoded(docs), candidate=Encoded(docs))
    assert "ndcg@10_delta_points" not in loss and loss["compared"] == 20


def test_vectors_are_compared_by_cosine_whatever_their_norm() -> None:
    docs, _, _ = _retrieval_case()
    stats = cosine_stats(docs, 3.0 * docs)
    assert stats["mean_cosine"] == stats["p05_cosine"] == 1.0
