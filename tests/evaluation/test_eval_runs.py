"""Eval runs read back over the API and for the dashboard; QDC applied when versions differ.
The evaluation service runs in-process here (the worker path is in test_evaluate_job)."""

import re

import numpy as np
import pytest

from embedhub.evaluation import services
from embedhub.evaluation.models import EvalRun
from embedhub.evaluation.selectors import eval_run_table
from embedhub.evaluation.services import _Searcher, evaluation_run
from embedhub.jobs.services import JobCancelled
from embedhub.vectors.selectors import index_vectors
from embedhub.vectors.services import serving_policy_settings_update
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from tests.factories import ModelVersionFactory
from workers.ml.drift import compensate
from workers.ml.encoder import FakeEncoder
from workers.ml.metrics import evaluate_run
from workers.ml.search import topk_cosine


@pytest.fixture
def runs(user, corpus, model_version, make_query_set):
    docs = numbered_texts(40)
    add_documents(corpus, docs)
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    queries = {f"q{i}": docs[f"d{i}"] + " extra" for i in range(6)}
    qrels = [(f"q{i}", f"d{i}", 1) for i in range(6)]
    first = make_query_set(owner=user, corpus=corpus, queries=queries, qrels=qrels, name="a")
    second = make_query_set(owner=user, corpus=corpus, queries=queries, qrels=qrels[:3], name="b")
    rng = np.random.default_rng(0)
    drift = rng.normal(size=64).astype(np.float32) * 0.3
    child = ModelVersionFactory(
        model=model_version.model, parent=model_version, dimension=64, drift=drift.tolist()
    )
    made = {
        "base": evaluation_run(owner=user, index=index, query_set=first),
        "qdc": evaluation_run(owner=user, index=index, query_set=first, model_version=child),
        "none": evaluation_run(
            owner=user, index=index, query_set=first, model_version=child, compensation="none"
        ),
        "b": evaluation_run(owner=user, index=index, query_set=second, mode="ann"),
    }
    return {
        "index": index,
        "docs": docs,
        "queries": queries,
        "drift": drift,
        "child": child,
        "sets": (first, second),
        **made,
    }


def test_qdc_is_applied_when_the_query_version_is_a_descendant(runs):
    assert runs["base"].compensation == "none"
    assert (
        runs["qdc"].compensation == "qdc" and runs["qdc"].params["compensation_requested"] == "auto"
    )
    assert runs["none"].compensation == "none"
    assert runs["qdc"].model_version_id == runs["child"].pk
    # Independently: the fake encoder is the same for both versions, so QDC shifts the
    # queries by -drift; score that with the reference metrics.
    encoder = FakeEncoder(dimension=64)
    doc_ids = list(runs["docs"])
    doc_vecs = encoder.encode([runs["docs"][d] for d in doc_ids])
    qids = list(runs["queries"])
    query_vecs = compensate(
        encoder.encode([runs["queries"][q] for q in qids], kind="query"), [runs["drift"]]
    )
    run = {
        q: dict(zip(doc_ids, (doc_vecs @ v).tolist(), strict=True))
        for q, v in zip(qids, query_vecs, strict=True)
    }
    expected = evaluate_run(qrels={q: {f"d{q[1:]}": 1} for q in qids}, run=run)
    for name, value in expected.aggregate.items():
        assert runs["qdc"].metrics[name] == pytest.approx(value, abs=1e-6)
    # The drift is large: compensating changes the numbers (else this test shows nothing).
    assert runs["qdc"].metrics != runs["none"].metrics


def test_eval_run_list_filters_and_detail_with_per_query(api, runs):
    first, second = runs["sets"]
    body = api.get("/api/v1/eval-runs/").json()
    assert body["count"] == 4 and "per_query" not in body["results"][0]
    filtered = api.get("/api/v1/eval-runs/", {"query_set": second.pk}).json()["results"]
    assert [r["id"] for r in filtered] == [runs["b"].pk]
    filtered = api.get(
        "/api/v1/eval-runs/", {"model_version": runs["child"].pk, "compensation": "qdc"}
    ).json()["results"]
    assert [r["id"] for r in filtered] == [runs["qdc"].pk]
    page = api.get("/api/v1/eval-runs/", {"page_size": 1}).json()
    assert len(page["results"]) == 1 and page["next"]

    detail = api.get(f"/api/v1/eval-runs/{runs['base'].pk}/").json()
    assert "per_query" not in detail and detail["metrics"] == runs["base"].metrics
    assert detail["n_queries"] == 6 and detail["query_set_name"] == "a"
    detail = api.get(f"/api/v1/eval-runs/{runs['base'].pk}/", {"per_query": 1}).json()
    assert set(detail["per_query"]) == set(runs["queries"])
    assert detail["per_query"]["q0"]["ndcg@10"] == runs["base"].per_query["q0"]["ndcg@10"]
    ann = api.get(f"/api/v1/eval-runs/{runs['b'].pk}/").json()
    assert ann["mode"] == "ann" and 0.0 <= ann["ann_recall_at_10"] <= 1.0
    assert 0.0 <= ann["ann_recall_at_k"] <= 1.0 and ann["params"]["k"] == 100


def test_other_user_sees_no_runs_and_gets_404(other_api, runs, other_user):
    assert other_api.get("/api/v1/eval-runs/").json()["count"] == 0
    assert other_api.get(f"/api/v1/eval-runs/{runs['base'].pk}/").status_code == 404
    assert eval_run_table(user=other_user) == []


def test_eval_run_table_rows_for_the_chart(user, staff_user, runs):
    first, second = runs["sets"]
    rows = eval_run_table(user=user, query_set=first)
    assert [r["eval_run"] for r in rows] == [runs["base"].pk, runs["qdc"].pk, runs["none"].pk]
    assert [(r["model_version"], r["compensation"]) for r in rows] == [
        (runs["index"].model_version_id, "none"),
        (runs["child"].pk, "qdc"),
        (runs["child"].pk, "none"),
    ]
    assert rows[1]["ndcg@10"] == runs["qdc"].metrics["ndcg@10"]
    assert rows[1]["recall@100"] == runs["qdc"].metrics["recall@100"]
    assert rows[1]["index_model_version"] == runs["index"].model_version_id
    assert len(eval_run_table(user=user)) == 4
    assert len(eval_run_table(user=staff_user)) == 4  # staff see everyone's runs


def _one_matrix_rankings(index, vectors, qids, *, k, exclude_self):
    """What exact evaluation did before it streamed: the whole index loaded, one top-k."""
    _, external_ids, matrix = index_vectors(index=index)
    row_of = {ext: row for row, ext in enumerate(external_ids)}
    exclude = [{row_of[q]} if q in row_of else set() for q in qids] if exclude_self else None
    rows, scores = topk_cosine(vectors, matrix, k=k, exclude=exclude)
    return [
        {external_ids[j]: float(s) for j, s in zip(r, sc, strict=True) if j >= 0}
        for r, sc in zip(rows, scores, strict=True)
    ]


def test_streamed_exact_search_ranks_exactly_as_the_whole_index_in_memory(
    user, corpus, model_version, settings
):
    # 1,000 vectors read 64 at a time: 16 blocks, each merged into the running top k.
    docs = numbered_texts(1000)
    add_documents(corpus, docs)
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    settings.EMBEDHUB = {**settings.EMBEDHUB, "VECTOR_BLOCK_ROWS": 64}
    qids = ["d3", "d500", "d999", "q-unknown"]  # three share a document's id: exclude_self
    vectors = FakeEncoder(dimension=64).encode(
        [docs["d3"], docs["d500"] + " x", "w7 w13", "document about w1"], kind="query"
    )
    for exclude_self in (False, True):
        searcher = _Searcher(index=index, ef_search=None, exclude_self=exclude_self)
        streamed = searcher.rankings(qids, vectors, k=25, exact=True)
        want = _one_matrix_rankings(index, vectors, qids, k=25, exclude_self=exclude_self)
        # The same documents in the same order; the scores agree to float32 rounding (a
        # dot product summed in another matrix shape may differ in its last bit).
        assert [list(r) for r in streamed] == [list(r) for r in want]
        for got, expected in zip(streamed, want, strict=True):
            assert list(got.values()) == pytest.approx(list(expected.values()), abs=1e-6)
        assert all(len(r) == 25 for r in streamed)
        if not exclude_self:
            assert next(iter(streamed[0])) == "d3"  # its own text: cosine 1
    assert "d3" not in streamed[0] and "d500" not in streamed[1]  # each excluded its own


class _CancelAfter:
    """A job context that records its progress reports and cancels at the n-th one."""

    def __init__(self, n: int):
        self.n, self.reports = n, []

    def progress(self, done, *, note=None, **kwargs) -> None:
        self.reports.append((done, note))
        if len(self.reports) == self.n:
            raise JobCancelled()


def test_queries_are_encoded_in_chunks_each_a_cancel_point_and_a_cancel_stores_no_run(
    runs, user, monkeypatch
):
    monkeypatch.setattr(services, "ENCODE_CHUNK", 4)
    index, first = runs["index"], runs["sets"][0]
    whole = _CancelAfter(0)  # never cancels
    run = evaluation_run(owner=user, index=index, query_set=first, ctx=whole)
    encoded = [done for done, note in whole.reports if re.match(r"encoded \d", note)]
    assert encoded == [4, 6] and whole.reports[-1][0] == 6
    assert run.metrics == runs["base"].metrics  # chunking changes no number
    before = EvalRun.objects.count()
    with pytest.raises(JobCancelled):
        evaluation_run(owner=user, index=index, query_set=first, ctx=_CancelAfter(2))
    assert EvalRun.objects.count() == before


def test_an_evaluation_that_does_not_say_follows_the_corpus_exclude_self_setting(
    user, corpus, model_version, make_query_set
):
    docs = numbered_texts(30)
    add_documents(corpus, docs)
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    # The query is document d4 itself, judged against d4: only its own document is relevant.
    query_set = make_query_set(
        owner=user, corpus=corpus, queries={"d4": docs["d4"]}, qrels=[("d4", "d4", 1)]
    )
    kept = evaluation_run(owner=user, index=index, query_set=query_set)
    assert kept.params["exclude_self"] is False and kept.metrics["ndcg@10"] == 1.0
    serving_policy_settings_update(corpus=corpus, exclude_self=True)
    dropped = evaluation_run(owner=user, index=index, query_set=query_set)
    assert dropped.params["exclude_self"] is True and dropped.metrics["ndcg@10"] == 0.0
    asked = evaluation_run(owner=user, index=index, query_set=query_set, exclude_self=False)
    assert asked.metrics["ndcg@10"] == 1.0


def test_a_resumed_evaluation_never_moves_the_jobs_bar_back(runs, user, monkeypatch):
    # An evaluation keeps no checkpoint: a new attempt encodes from its first query again,
    # while the job's row still shows how far the lost attempt got.
    from embedhub.jobs.models import Job
    from embedhub.jobs.runner import JobContext
    from embedhub.jobs.services import job_claim

    monkeypatch.setattr(services, "ENCODE_CHUNK", 2)
    index, first = runs["index"], runs["sets"][0]
    job = Job.objects.create(owner=user, kind="evaluate", params={}, queue="cpu")
    job = job_claim(job_id=job.pk, worker="second-attempt")
    Job.objects.filter(pk=job.pk).update(progress_done=5, progress_total=6)
    shown = []

    class Watching(JobContext):
        def progress(self, done, **kwargs):
            super().progress(done, **kwargs)
            shown.append(Job.objects.get(pk=job.pk).progress_done)

    evaluation_run(owner=user, index=index, query_set=first, ctx=Watching(job))
    assert shown and min(shown) == 5 and shown[-1] == 6
