"""index_search returns the best k it found, in order: on an index small enough for
ef_search to cover every vector, HNSW's top k is exactly the exact top k."""

import numpy as np
import pytest
from django.db import connection, transaction

from embedhub.vectors import tables
from embedhub.vectors.selectors import (
    index_search,
    search_plan,
    search_settings_apply,
    search_sql,
)
from tests.evaluation.conftest import build_index
from tests.vectors.conftest import make_documents

pytestmark = pytest.mark.django_db


def _queries(n: int, dim: int, seed: int = 7) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _assert_sorted(hits) -> None:
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_ann_top_k_is_sorted_and_equals_exact_when_ef_search_covers_the_index(
    user, corpus, model_version
):
    make_documents(corpus, 300)
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    queries = _queries(8, 64)
    ann = index_search(index=index, query_vectors=queries, k=50, ef_search=400)
    exact = index_search(index=index, query_vectors=queries, k=50, exact=True)
    for approx, truth in zip(ann, exact, strict=True):
        _assert_sorted(approx)
        assert [h.document_id for h in approx] == [h.document_id for h in truth]
        assert [h.score for h in approx] == pytest.approx([h.score for h in truth], abs=1e-6)


def test_ann_asked_for_more_than_ef_search_still_returns_k_hits_in_order(
    user, corpus, model_version
):
    make_documents(corpus, 300)
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    for hits in index_search(index=index, query_vectors=_queries(4, 64), k=120, ef_search=10):
        assert len(hits) == 120 and len({h.document_id for h in hits}) == 120
        _assert_sorted(hits)


def _scan(index, query: np.ndarray, *, ef_search: int, limit: int) -> list[tuple[float, int]]:
    """What pgvector's relaxed-order scan yields first, in its own order: (distance, id)."""
    literal = tables.vector_literal(query)
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(f"SET LOCAL hnsw.ef_search = {ef_search}")
        cur.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cur.execute(
            f"SELECT embedding <=> %s::vector, document_id FROM {index.table_name} "
            "ORDER BY embedding <=> %s::vector LIMIT %s",
            [literal, literal, limit],
        )
        return cur.fetchall()


def test_ann_top_k_is_the_best_k_of_every_candidate_batch_the_scan_found(
    user, corpus, model_version
):
    make_documents(corpus, 300)
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    for query in _queries(4, 64, seed=11):
        # k = 115 with ef_search = 10: the 115th row lies in the scan's 12th batch of 10.
        found = _scan(index, query, ef_search=10, limit=120)
        best = [doc for _, doc in sorted(found)[:115]]
        hits = index_search(index=index, query_vectors=query, k=115, ef_search=10)[0]
        assert [h.document_id for h in hits] == best


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_the_re_sort_reads_every_candidate_before_the_limit(user, corpus, model_version):
    # A sort on the scan's own key would be taken as done: the limit would then stop the
    # reading after k rows and nothing would be re-sorted.
    make_documents(corpus, 300)
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    plan = search_plan(index=index, k=115, exact=False, ef_search=10)
    assert (plan.rows, plan.candidates) == (115, 120)
    literal = tables.vector_literal(_queries(1, 64)[0])
    with transaction.atomic(), connection.cursor() as cur:
        search_settings_apply(cur, plan=plan, exact=False)
        cur.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + search_sql(index=index),
            [literal, literal, plan.candidates, plan.rows],
        )
        nodes = list(_nodes(cur.fetchone()[0][0]["Plan"]))
    assert any(n.get("Index Name") == f"{index.table_name}_hnsw" for n in nodes)
    (scan,) = [n for n in nodes if n["Node Type"] == "CTE Scan"]
    assert scan["Actual Rows"] == 120
    assert "Incremental Sort" not in {n["Node Type"] for n in nodes}


def test_chunked_ann_keeps_each_documents_best_chunk_and_equals_exact(user, corpus, model_version):
    make_documents(corpus, 150, words=40)
    index = build_index(
        owner=user,
        corpus=corpus,
        model_version=model_version,
        chunking="chunk",
        chunk_window=16,
        chunk_overlap=4,
    )
    assert 150 * 2 < index.vector_count <= 1000  # several chunks each; ef_search covers all
    queries = _queries(6, 64, seed=3)
    ann = index_search(index=index, query_vectors=queries, k=20, ef_search=1000)
    exact = index_search(index=index, query_vectors=queries, k=20, exact=True)
    for approx, truth in zip(ann, exact, strict=True):
        _assert_sorted(approx)
        assert len({h.document_id for h in approx}) == len(approx) == 20
        assert [(h.document_id, h.chunk) for h in approx] == [
            (h.document_id, h.chunk) for h in truth
        ]


def test_search_skips_vectors_whose_document_was_deleted_since_the_build(
    user, corpus, model_version
):
    make_documents(corpus, 120)
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    query = _queries(1, 64)
    first = index_search(index=index, query_vectors=query, k=10, ef_search=200)[0]
    corpus.documents.filter(pk=first[0].document_id).delete()  # its vector stays till a build
    hits = index_search(index=index, query_vectors=query, k=10, ef_search=200)[0]
    assert len(hits) == 10 and first[0].document_id not in {h.document_id for h in hits}
    assert [h.document_id for h in hits[:9]] == [h.document_id for h in first[1:]]
