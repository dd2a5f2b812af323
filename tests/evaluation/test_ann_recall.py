"""An ANN evaluation reports its recall against exact search at 10 and at its own k."""

import pytest

from embedhub.evaluation.services import evaluation_run
from embedhub.vectors import selectors as vector_selectors
from tests.evaluation.conftest import add_documents, build_index, numbered_texts

pytestmark = pytest.mark.django_db


@pytest.fixture
def judged(user, corpus, model_version, make_query_set):
    docs = numbered_texts(200)
    add_documents(corpus, docs)
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    queries = {f"q{i}": docs[f"d{i}"] + " and more" for i in range(8)}
    query_set = make_query_set(
        owner=user, corpus=corpus, queries=queries, qrels=[(q, f"d{q[1:]}", 1) for q in queries]
    )
    return index, query_set


def test_ann_recall_is_reported_at_the_evaluations_k_beside_10(user, judged):
    index, query_set = judged
    run = evaluation_run(
        owner=user, index=index, query_set=query_set, mode="ann", k=50, ef_search=400
    )
    # ef_search covers all 200 vectors: HNSW's top 50 is the exact top 50.
    assert run.params["k"] == 50
    assert run.ann_recall_at_10 == 1.0 and run.ann_recall_at_k == 1.0


def test_recall_at_k_compares_with_the_exact_top_k_not_the_top_10(user, judged, monkeypatch):
    index, query_set = judged
    search = vector_selectors.index_search

    def top_10_right_then_the_farthest(*, index, query_vectors, k, exact=False, ef_search=None):
        if exact:
            return search(index=index, query_vectors=query_vectors, k=k, exact=True)
        every = search(index=index, query_vectors=query_vectors, k=200, exact=True)
        return [hits[:10] + hits[::-1][: k - 10] for hits in every]

    monkeypatch.setattr(vector_selectors, "index_search", top_10_right_then_the_farthest)
    run = evaluation_run(owner=user, index=index, query_set=query_set, mode="ann", k=30)
    assert run.ann_recall_at_10 == 1.0
    assert run.ann_recall_at_k == pytest.approx(10 / 30)


def test_below_10_both_recalls_are_at_k_and_exact_runs_report_none(user, judged):
    index, query_set = judged
    ann = evaluation_run(
        owner=user, index=index, query_set=query_set, mode="ann", k=5, ef_search=400
    )
    assert ann.ann_recall_at_10 == ann.ann_recall_at_k == 1.0
    exact = evaluation_run(owner=user, index=index, query_set=query_set, k=5)
    assert exact.ann_recall_at_10 is None and exact.ann_recall_at_k is None
