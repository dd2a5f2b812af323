"""The evaluate job end to end on a real worker: numbers checked against an independent
brute-force ranking scored by pytrec_eval, and by hand where the ranking is known."""

import numpy as np
import pytest

from embedhub.evaluation.models import EvalRun, Query
from embedhub.jobs.submission import job_submit_checked
from tests.conftest import wait_for_job
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from workers.ml.encoder import FakeEncoder

pytestmark = pytest.mark.django_db(transaction=True)
pytrec_eval = pytest.importorskip("pytrec_eval")

TREC = {
    "ndcg_cut_10": "ndcg@10",
    "recall_10": "recall@10",
    "recall_100": "recall@100",
    "map_cut_100": "map@100",
}


def _evaluate(user, **params) -> tuple:
    job, _ = job_submit_checked(user=user, kind="evaluate", params=params)
    job = wait_for_job(job.pk, timeout=180)
    assert job.status == "succeeded", job.error
    return job, EvalRun.objects.get(pk=job.result["eval_run"])


def _brute_force_run(docs: dict, queries: dict, *, exclude_self=False) -> dict:
    """Cosine of fake vectors over every document, no platform code involved."""
    encoder = FakeEncoder(dimension=64)
    doc_ids = list(docs)
    doc_vecs = encoder.encode([docs[d] for d in doc_ids])
    run = {}
    for qid, text in queries.items():
        scores = doc_vecs @ encoder.encode([text], kind="query")[0]
        run[qid] = {
            d: float(s)
            for d, s in zip(doc_ids, scores, strict=True)
            if not (exclude_self and d == qid)
        }
    return run


def _pytrec(qrels: dict, run: dict) -> dict:
    return pytrec_eval.RelevanceEvaluator(qrels, set(TREC)).evaluate(run)


def _rank(ranking: dict, doc: str) -> int:
    return sorted(ranking, key=ranking.get, reverse=True).index(doc) + 1


def test_exact_ann_exclude_self_and_chunked_against_independent_scores(
    user, corpus, model_version, make_query_set, worker
):
    docs = numbered_texts(60)
    add_documents(corpus, docs)
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    queries = {"q_exact": docs["d3"], "q_other": "unrelated words here", "d5": docs["d5"]}
    qrels_rows = [
        ("q_exact", "d3", 2),
        ("q_other", "d7", 1),
        ("q_other", "d11", 2),
        ("d5", "d8", 1),
    ]
    query_set = make_query_set(owner=user, corpus=corpus, queries=queries, qrels=qrels_rows)
    Query.objects.create(query_set=query_set, external_id="no-judgements", text="lonely")
    qrels = {q: {} for q, _, _ in qrels_rows}
    for q, d, r in qrels_rows:
        qrels[q][d] = r

    job, run = _evaluate(user, corpus=corpus.pk, query_set=query_set.pk)
    assert job.result["skipped_unjudged"] == 1 and run.n_queries == 3
    assert job.progress_done == job.progress_total == 3 and job.progress_unit == "queries"
    assert (run.mode, run.compensation, run.index_id) == ("exact", "none", index.pk)
    assert job.result["metrics"] == run.metrics
    expected = _pytrec(qrels, _brute_force_run(docs, queries))
    for qid, measures in expected.items():
        for trec_name, ours in TREC.items():
            assert run.per_query[qid][ours] == pytest.approx(measures[trec_name], abs=1e-6)
    for trec_name, ours in TREC.items():
        mean = np.mean([m[trec_name] for m in expected.values()])
        assert run.metrics[ours] == pytest.approx(mean, abs=1e-6)
    # By hand: a query identical to its only relevant document finds it first.
    assert run.per_query["q_exact"] == {
        "ndcg@10": 1.0,
        "recall@10": 1.0,
        "recall@100": 1.0,
        "mrr@10": 1.0,
        "map@100": 1.0,
    }
    # "d5" is also a document id and its text is d5's: d5 itself ranks first, d8 at rank r.
    r = _rank(_brute_force_run(docs, queries)["d5"], "d8")
    assert r > 1 and run.per_query["d5"]["map@100"] == pytest.approx(1 / r)

    _, dropped = _evaluate(user, index=index.pk, query_set=query_set.pk, exclude_self=True)
    assert dropped.params["exclude_self"] is True
    assert dropped.per_query["d5"]["map@100"] == pytest.approx(1 / (r - 1))
    assert dropped.per_query["q_other"] == run.per_query["q_other"]
    expected = _pytrec(qrels, _brute_force_run(docs, queries, exclude_self=True))
    assert dropped.metrics["ndcg@10"] == pytest.approx(
        np.mean([m["ndcg_cut_10"] for m in expected.values()]), abs=1e-6
    )

    _, ann = _evaluate(user, index=index.pk, query_set=query_set.pk, mode="ann", ef_search=40)
    assert ann.mode == "ann" and ann.params["ef_search"] == 40
    # 60 vectors in HNSW with ef_search 40: ANN must agree with exact almost everywhere.
    assert 0.9 <= ann.ann_recall_at_10 <= 1.0
    if ann.ann_recall_at_10 == 1.0:
        assert ann.per_query["q_exact"] == run.per_query["q_exact"]
    assert ann.per_query["q_exact"]["ndcg@10"] == 1.0

    # A chunked index (each short document is one chunk) goes through index_search(exact)
    # and must give the numpy path's numbers.
    chunked = build_index(
        owner=user,
        corpus=corpus,
        model_version=model_version,
        chunking="chunk",
        chunk_window=128,
        chunk_overlap=16,
    )
    _, by_chunks = _evaluate(user, index=chunked.pk, query_set=query_set.pk)
    assert by_chunks.index_id == chunked.pk
    for name, value in run.metrics.items():
        assert by_chunks.metrics[name] == pytest.approx(value, abs=1e-6)


REAL_DOCS = {
    "cat": "The cat sat on the mat and purred quietly in the afternoon sun.",
    "rocket": "The rocket launched into orbit carrying a communications satellite.",
    "bread": "Bake the bread dough in a hot oven for forty minutes until golden.",
    "stocks": "The stock market fell sharply after the central bank raised interest rates.",
    "flood": "Heavy rain caused the river to flood the valley and nearby villages.",
    "piano": "She practised the piano sonata every evening before the recital.",
}
REAL_QUERIES = {
    "q1": "a kitten resting on a rug",
    "q2": "spacecraft sent into space",
    "q3": "how long should a loaf be baked",
    "q4": "shares dropped when rates went up",
}


def test_real_model_ranks_paraphrases_first(user, corpus, make_query_set, worker):
    from embedhub.registry.encoders import encoder_for
    from tests.factories import ModelVersionFactory

    version = ModelVersionFactory(max_tokens=256)
    add_documents(corpus, REAL_DOCS)
    build_index(owner=user, corpus=corpus, model_version=version, encoder="")
    qrels_rows = [
        ("q1", "cat", 1),
        ("q2", "rocket", 1),
        ("q3", "bread", 1),
        ("q4", "stocks", 2),
        ("q4", "flood", 1),
    ]
    query_set = make_query_set(owner=user, corpus=corpus, queries=REAL_QUERIES, qrels=qrels_rows)

    _, run = _evaluate(user, corpus=corpus.pk, query_set=query_set.pk, k=10)
    # By hand: q1-q3 find their one relevant document first: every metric is 1.
    for qid in ("q1", "q2", "q3"):
        assert run.per_query[qid]["ndcg@10"] == 1.0 and run.per_query[qid]["mrr@10"] == 1.0
    # q4: "stocks" (gain 2) first, "flood" (gain 1) at rank r among 6 documents, so
    # nDCG@10 = (2 + 1/log2(r+1)) / (2 + 1/log2 3) and MAP = (1 + 2/r) / 2.
    encoder = encoder_for(model_version=version)
    scores = (
        encoder.encode(list(REAL_DOCS.values()))
        @ encoder.encode([REAL_QUERIES["q4"]], kind="query")[0]
    )
    ranking = dict(zip(REAL_DOCS, scores.tolist(), strict=True))
    assert _rank(ranking, "stocks") == 1
    r = _rank(ranking, "flood")
    ideal = 2 + 1 / np.log2(3)
    assert run.per_query["q4"]["ndcg@10"] == pytest.approx((2 + 1 / np.log2(r + 1)) / ideal)
    assert run.per_query["q4"]["map@100"] == pytest.approx((1 + 2 / r) / 2)
    assert run.metrics["ndcg@10"] == pytest.approx(
        np.mean([run.per_query[q]["ndcg@10"] for q in REAL_QUERIES])
    )
