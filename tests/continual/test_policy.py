"""Serving policies and the policy job: every candidate measured and recorded, the best one
applied within the tolerance, a reindex activated only when it wins, search and evaluation
following the policy unless a request says otherwise, and two accounts kept apart.

The fake encoder makes the outcome known by construction: judgements are each query's
nearest document in the space a given candidate searches (QDC-compensated queries, or the
corpus's current texts when the old index is stale), so that candidate ranks every relevant
document first and must win. The jobs run through job_execute, the worker's code path."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from django.db import connection

from embedhub.corpora.models import Document
from embedhub.evaluation import services as evaluation_services
from embedhub.evaluation.models import EvalRun, Qrel, Query, QuerySet
from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_execute
from embedhub.jobs.services import job_cancel, job_retry
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors import compensation as qdc
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors import tables
from embedhub.vectors.models import ServingPolicy, VectorIndex
from tests.conftest import wait_for_job, wait_until
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from tests.factories import CorpusFactory, ModelVersionFactory
from tests.jobs.test_progress import progress_history  # noqa: F401 - a fixture
from workers.ml.drift import compensate
from workers.ml.encoder import load_encoder

pytestmark = pytest.mark.django_db(transaction=True)

DIM = 16
N_QUERIES = 12
CANDIDATES = ["current", "old_index_none", "old_index_qdc", "old_index_adapter", "reindex"]


def _delta() -> np.ndarray:
    rng = np.random.default_rng(7)
    delta = rng.normal(size=DIM).astype(np.float32)
    return 0.8 * delta / np.linalg.norm(delta)


@pytest.fixture
def lineage(db):
    v1 = ModelVersionFactory()
    delta = _delta()
    v2 = ModelVersionFactory(
        model=v1.model, parent=v1, drift=delta.tolist(), drift_norm=float(np.linalg.norm(delta))
    )
    return v1, v2


def _queries() -> dict[str, str]:
    return {
        f"q{i}": f"question {i} about w{i * 5 % 101} and w{i * 11 % 97}" for i in range(N_QUERIES)
    }


def _judge_nearest(owner, corpus, query_vectors: np.ndarray, doc_matrix, doc_ids) -> QuerySet:
    """A "test" query set whose one relevant document per query is its nearest one."""
    query_set = QuerySet.objects.create(owner=owner, corpus=corpus, name="test")
    texts = _queries()
    Query.objects.bulk_create(
        Query(query_set=query_set, external_id=qid, text=text) for qid, text in texts.items()
    )
    best = np.argmax(query_vectors @ doc_matrix.T, axis=1)
    Qrel.objects.bulk_create(
        Qrel(query_set=query_set, query_external_id=qid, document_external_id=doc_ids[j])
        for qid, j in zip(texts, best, strict=True)
    )
    return query_set


def _corpus(owner, version, *, n_docs: int = 40, encoder: str = f"fake:{DIM}"):
    corpus = CorpusFactory(owner=owner)
    add_documents(corpus, numbered_texts(n_docs))
    index = build_index(owner=owner, corpus=corpus, model_version=version, encoder=encoder)
    corpus.active_index = index
    corpus.save(update_fields=["active_index"])
    return corpus, index


def _raw_queries() -> np.ndarray:
    return load_encoder(f"fake:{DIM}").encode(list(_queries().values()), kind="query")


def qdc_wins(owner, lineage):
    """A corpus on v1 whose judgements reward v2's queries with QDC on the v1 index."""
    corpus, index = _corpus(owner, lineage[0])
    _, ext_ids, matrix = vector_selectors.index_vectors(index=index)
    compensated = compensate(_raw_queries(), [_delta()])
    return corpus, index, _judge_nearest(owner, corpus, compensated, matrix, ext_ids)


def _run(job) -> Job:
    assert job_execute(job_id=job.pk, worker="test@inline") == "succeeded", Job.objects.get(
        pk=job.pk
    ).error
    job.refresh_from_db()
    return job


def _policy(user, **params) -> Job:
    return _run(job_submit_checked(user=user, kind="policy", params=params)[0])


def _expected_choice(candidates: list[dict], tolerance: float) -> str:
    """The rule, recomputed from the recorded numbers: the best measured candidate (the
    cheapest of equals), only if it beats the current one by more than the tolerance."""
    measured = [c for c in candidates if c["status"] == "evaluated"]
    best = max(measured, key=lambda c: (c["metric"], -CANDIDATES.index(c["name"])))
    return best["name"] if best["metric"] > candidates[0]["metric"] + tolerance else "current"


def _check_recorded(user, report: dict) -> None:
    assert [c["name"] for c in report["candidates"]] == CANDIDATES
    for candidate in report["candidates"]:
        if candidate["status"] == "skipped":
            assert candidate["reason"], candidate
            continue
        run = EvalRun.objects.get(pk=candidate["eval_run"])
        assert run.owner == user and run.query_set_id == report["query_set"]
        assert run.metrics[report["metric"]] == candidate["metric"]
        assert (run.index_id, run.model_version_id) == (
            candidate["index"],
            candidate["model_version"],
        )
    adapter = report["candidates"][3]
    if "adapter" not in qdc.COMPENSATIONS:
        assert adapter["status"] == "skipped" and "adapter" in adapter["reason"]
    assert [c["name"] for c in report["candidates"] if c["chosen"]] == [report["chosen"]]
    assert report["chosen"] == _expected_choice(report["candidates"], report["tolerance"])


def test_policy_job_records_every_candidate_and_applies_the_best(api, user, lineage):
    v1, v2 = lineage
    corpus, index, query_set = qdc_wins(user, lineage)
    job = _policy(user, corpus=corpus.pk)
    assert job.params["corpora"][0]["model_version"] == v2.pk  # newest descendant of v1
    report = job.result["corpora"][0]
    _check_recorded(user, report)
    by_name = {c["name"]: c for c in report["candidates"]}
    assert by_name["old_index_qdc"]["metric"] > by_name["current"]["metric"] + 0.01
    assert report["chosen"] == "old_index_qdc" and job.result["changed"] == [corpus.pk]

    policy = ServingPolicy.objects.get(corpus=corpus)
    assert (policy.index_id, policy.query_version_id, policy.compensation) == (None, v2.pk, "qdc")
    assert policy.decided_by_id == job.pk
    assert [c["eval_run"] for c in policy.decision["candidates"] if c.get("eval_run")] == [
        c["eval_run"] for c in report["candidates"] if c.get("eval_run")
    ]
    shadow = VectorIndex.objects.get(pk=by_name["reindex"]["index"])
    corpus.refresh_from_db()
    assert corpus.active_index_id == index.pk and shadow.state == "retired"  # lost: not active

    # Search follows the policy; each field a request names overrides it.
    search = {"corpus": corpus.pk, "query": _queries()["q3"], "k": 3, "exact": True}
    body = api.post("/api/v1/search/", search, format="json").json()
    assert (body["index"], body["model_version"], body["compensation"]) == (index.pk, v2.pk, "qdc")
    assert body["policy"] == policy.pk
    body = api.post("/api/v1/search/", {**search, "compensation": "none"}, format="json").json()
    assert (body["model_version"], body["compensation"]) == (v2.pk, "none")
    body = api.post("/api/v1/search/", {**search, "index": index.pk}, format="json").json()
    assert (body["model_version"], body["compensation"], body["policy"]) == (v1.pk, "none", None)
    body = api.post("/api/v1/search/", {**search, "model_version": v1.pk}, format="json").json()
    assert (body["model_version"], body["compensation"]) == (v1.pk, "none")

    # So does evaluation of the corpus, and it measures what the policy job measured.
    evaluate = _run(
        job_submit_checked(
            user=user, kind="evaluate", params={"corpus": corpus.pk, "query_set": query_set.pk}
        )[0]
    )
    assert (evaluate.params["model_version"], evaluate.params["compensation"]) == (v2.pk, "qdc")
    assert evaluate.result["metrics"]["ndcg@10"] == by_name["old_index_qdc"]["metric"]


def test_tolerance_keeps_the_current_policy_unless_beaten_by_more(user, lineage):
    _, v2 = lineage
    corpus, index, _ = qdc_wins(user, lineage)
    job = _policy(user, corpus=corpus.pk, tolerance=1.0, allow_reindex=False)
    report = job.result["corpora"][0]
    _check_recorded(user, report)
    assert report["chosen"] == "current" and "more than 1.0" in report["reason"]
    assert report["candidates"][-1]["status"] == "skipped"  # reindex not allowed
    assert not VectorIndex.objects.filter(corpus=corpus).exclude(pk=index.pk).exists()
    policy = ServingPolicy.objects.get(corpus=corpus)
    assert (policy.index_id, policy.query_version_id, policy.compensation) == (None, None, "none")
    assert policy.decision["chosen"] == "current" and job.result["changed"] == []


def test_a_dry_run_measures_but_changes_nothing(user, lineage):
    corpus, _, _ = qdc_wins(user, lineage)
    job = _policy(user, corpus=corpus.pk, apply=False, allow_reindex=False)
    assert job.result["corpora"][0]["chosen"] == "old_index_qdc"
    assert job.result["corpora"][0]["applied"] is False
    assert not ServingPolicy.objects.filter(corpus=corpus).exists()


def test_a_reindex_is_activated_only_when_it_wins(user, lineage):
    v1, v2 = lineage
    corpus, old = _corpus(user, v1)
    # The texts changed after the v1 index was built: only a rebuilt index knows them.
    for doc in Document.objects.filter(corpus=corpus):
        doc.text = f"rewritten {doc.external_id} about w{len(doc.text) % 89}"
        doc.content_hash = hashlib.sha256(doc.text.encode()).hexdigest()
        doc.save(update_fields=["text", "content_hash"])
    docs = list(Document.objects.filter(corpus=corpus).order_by("id"))
    fresh = load_encoder(f"fake:{DIM}").encode([d.text for d in docs], kind="document")
    _judge_nearest(user, corpus, _raw_queries(), fresh, [d.external_id for d in docs])

    job = _policy(user, corpus=corpus.pk)
    report = job.result["corpora"][0]
    _check_recorded(user, report)
    assert report["chosen"] == "reindex"
    shadow = VectorIndex.objects.get(pk=report["candidates"][-1]["index"])
    corpus.refresh_from_db()
    old.refresh_from_db()
    assert corpus.active_index_id == shadow.pk and shadow.model_version_id == v2.pk
    assert old.state == "retired"
    policy = ServingPolicy.objects.get(corpus=corpus)
    assert (policy.index_id, policy.query_version_id, policy.compensation) == (None, None, "none")
    serving = vector_selectors.serving_resolve(corpus=corpus)
    assert (serving.index.pk, serving.model_version.pk) == (shadow.pk, v2.pk)


def test_two_users_policies_are_isolated(api, other_api, user, other_user, lineage):
    mine, _, _ = qdc_wins(user, lineage)
    theirs, their_index, _ = qdc_wins(other_user, lineage)
    job = _policy(user, allow_reindex=False)  # default: all of the caller's corpora
    assert [plan["corpus"] for plan in job.params["corpora"]] == [mine.pk]
    assert not ServingPolicy.objects.filter(corpus=theirs).exists()
    assert not EvalRun.objects.filter(owner=other_user).exists()
    their_search = {"corpus": theirs.pk, "query": "w3", "k": 3}
    body = other_api.post("/api/v1/search/", their_search, format="json").json()
    assert (body["index"], body["compensation"], body["policy"]) == (their_index.pk, "none", None)

    response = other_api.post(
        "/api/v1/jobs/", {"kind": "policy", "params": {"corpus": mine.pk}}, format="json"
    )
    assert response.status_code == 404, response.content
    assert other_api.get(f"/api/v1/corpora/{mine.pk}/policy/").status_code == 404
    assert api.get(f"/api/v1/corpora/{mine.pk}/policy/").json()["compensation"] == "qdc"


def test_a_second_policy_job_for_a_corpus_is_refused_while_one_is_queued(api, user, lineage):
    corpus, _, _ = qdc_wins(user, lineage)
    first, _ = job_submit_checked(user=user, kind="policy", params={"corpus": corpus.pk})
    response = api.post(
        "/api/v1/jobs/", {"kind": "policy", "params": {"corpus": corpus.pk}}, format="json"
    )
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "policy_running"
    assert f"job {first.pk}" in response.json()["error"]["message"]


def _api_job(api, kind: str, **params):
    return api.post("/api/v1/jobs/", {"kind": kind, "params": params}, format="json")


def test_a_reindex_is_refused_while_a_policy_job_covering_its_corpus_is_queued(api, user, lineage):
    corpus, _, _ = qdc_wins(user, lineage)
    # Over all of the caller's corpora: the corpus is only in its plans, not its corpus.
    policy, _ = job_submit_checked(user=user, kind="policy", params={})
    assert policy.corpus_id is None
    indexes = VectorIndex.objects.filter(corpus=corpus).count()
    response = _api_job(api, "reindex", corpus=corpus.pk, model_version=lineage[1].pk)
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "policy_running"
    assert f"policy job {policy.pk} covering corpus {corpus.pk}" in error["message"]
    assert not Job.objects.filter(kind="reindex").exists()
    assert VectorIndex.objects.filter(corpus=corpus).count() == indexes  # no shadow left


def test_a_policy_job_naming_a_corpus_a_reindex_is_queued_for_is_refused(api, user, lineage):
    corpus, _, _ = qdc_wins(user, lineage)
    params = {"corpus": corpus.pk, "model_version": lineage[1].pk}
    reindex, _ = job_submit_checked(user=user, kind="reindex", params=params)
    response = _api_job(api, "policy", corpus=corpus.pk)
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "reindex_running"
    assert f"reindex job {reindex.pk} covering corpus {corpus.pk}" in error["message"]
    assert not Job.objects.filter(kind="policy").exists()
    Job.objects.filter(pk=reindex.pk).update(status=Job.Status.SUCCEEDED)
    assert _api_job(api, "policy", corpus=corpus.pk).status_code == 202


def test_a_policy_job_over_all_corpora_skips_one_a_reindex_is_queued_for(api, user, lineage):
    busy, _, _ = qdc_wins(user, lineage)
    free, _, _ = qdc_wins(user, lineage)
    params = {"corpus": busy.pk, "model_version": lineage[1].pk}
    reindex, _ = job_submit_checked(user=user, kind="reindex", params=params)
    response = _api_job(api, "policy")  # a scheduled run must not fail for every corpus
    assert response.status_code == 202, response.content
    policy = Job.objects.get(pk=response.json()["id"])
    plans = {plan["corpus"]: plan for plan in policy.params["corpora"]}
    assert plans[busy.pk]["skip"] == f"reindex job {reindex.pk} is queued"
    assert "skip" not in plans[free.pk] and plans[free.pk]["model_version"] == lineage[1].pk

    # Its retry re-checks only the corpora it decides for: the skipped one stays skipped.
    Job.objects.filter(pk=policy.pk).update(status=Job.Status.FAILED)
    response = api.post(f"/api/v1/jobs/{policy.pk}/retry/")
    assert response.status_code == 202, response.content


def test_a_failed_policy_job_is_not_retried_while_a_reindex_of_its_corpus_is_queued(
    api, client, user, lineage
):
    corpus, _, _ = qdc_wins(user, lineage)
    policy, _ = job_submit_checked(user=user, kind="policy", params={"corpus": corpus.pk})
    Job.objects.filter(pk=policy.pk).update(status=Job.Status.FAILED, error="a shard failed")
    # A failed policy job blocks nothing, so a reindex of its corpus gets in...
    params = {"corpus": corpus.pk, "model_version": lineage[1].pk}
    reindex, _ = job_submit_checked(user=user, kind="reindex", params=params)
    # ... and the policy job's retry must then wait for it, like a submission would.
    response = api.post(f"/api/v1/jobs/{policy.pk}/retry/")
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "reindex_running"
    assert f"reindex job {reindex.pk} covering corpus {corpus.pk}" in error["message"]
    client.force_login(user)
    page = client.post(f"/jobs/{policy.pk}/retry/", follow=True)
    assert page.status_code == 200
    assert f"reindex job {reindex.pk} covering corpus {corpus.pk}" in page.content.decode()
    policy.refresh_from_db()
    assert (policy.status, policy.error) == ("failed", "a shard failed")

    Job.objects.filter(pk=reindex.pk).update(status=Job.Status.SUCCEEDED)
    response = api.post(f"/api/v1/jobs/{policy.pk}/retry/")
    assert response.status_code == 202, response.content
    assert Job.objects.get(pk=policy.pk).status == Job.Status.QUEUED


def test_a_shard_or_a_skipping_policy_job_never_blocks_a_corpus(api, user, lineage):
    corpus, _ = _corpus(user, ModelVersionFactory())  # nothing descends: policy skips it
    judged = QuerySet.objects.create(owner=user, corpus=corpus, name="test")
    Qrel.objects.create(query_set=judged, query_external_id="q", document_external_id="d1")
    policy, _ = job_submit_checked(user=user, kind="policy", params={})
    assert policy.params["corpora"][0]["skip"]
    parent = Job.objects.create(owner=user, kind="reindex", corpus=corpus, status="cancelled")
    Job.objects.create(owner=user, kind="reindex", corpus=corpus, parent=parent, status="running")
    response = _api_job(api, "reindex", corpus=corpus.pk, model_version=lineage[1].pk)
    assert response.status_code == 202, response.content


def test_a_corpus_with_nothing_newer_is_refused_by_name_and_skipped_otherwise(api, user):
    corpus, _ = _corpus(user, ModelVersionFactory())
    QuerySet.objects.create(owner=user, corpus=corpus, name="test")
    Qrel.objects.create(
        query_set=corpus.query_sets.get(), query_external_id="q", document_external_id="d1"
    )
    response = api.post(
        "/api/v1/jobs/", {"kind": "policy", "params": {"corpus": corpus.pk}}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"]["field"] == "params.model_version"
    job, _ = job_submit_checked(user=user, kind="policy", params={})
    assert "no ready version descends" in job.params["corpora"][0]["skip"]


def test_a_query_set_a_version_was_trained_on_is_never_measured_whatever_its_name(api, user):
    from embedhub.continual.selectors import policy_query_set

    parent = ModelVersionFactory()
    corpus, _ = _corpus(user, parent)
    sets = {}
    for name in ("held-out", "test", "my-training-pairs"):  # created in this order
        sets[name] = QuerySet.objects.create(owner=user, corpus=corpus, name=name)
        Qrel.objects.create(query_set=sets[name], query_external_id="q", document_external_id="d1")
    trained = {"source": "query_set", "query_set": sets["test"].pk}
    ModelVersionFactory(model=parent.model, parent=parent, provenance=trained)
    # "test" was trained on, so the newest other set would be measured: the user's training
    # set under another name, unless the second fine-tune's provenance rules it out too.
    child = ModelVersionFactory(
        model=parent.model,
        parent=parent,
        provenance={"source": "query_set", "query_set": sets["my-training-pairs"].pk},
    )
    assert policy_query_set(corpus=corpus) == sets["held-out"]
    sets["held-out"].delete()
    assert policy_query_set(corpus=corpus) is None
    response = api.post(
        "/api/v1/jobs/",
        {"kind": "policy", "params": {"corpus": corpus.pk, "model_version": child.pk}},
        format="json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["field"] == "params.corpus"
    assert "no held-out judged query set" in error["message"]


def test_activating_an_index_by_hand_resets_the_policy_to_follow_it(api, user, lineage):
    v1, v2 = lineage
    corpus, index, _ = qdc_wins(user, lineage)
    _policy(user, corpus=corpus.pk, allow_reindex=False)
    other = build_index(owner=user, corpus=corpus, model_version=v2, encoder=f"fake:{DIM}")
    assert api.post(f"/api/v1/indexes/{other.pk}/activate/").status_code == 200
    policy = ServingPolicy.objects.get(corpus=corpus)
    assert (policy.index_id, policy.query_version_id, policy.compensation) == (None, None, "none")
    assert policy.decision["chosen"] == "old_index_qdc"  # the record of the last decision stays


def test_policy_settings_are_read_and_changed_through_the_api(api, other_api, user, lineage):
    corpus, _, _ = qdc_wins(user, lineage)
    url = f"/api/v1/corpora/{corpus.pk}/policy/"
    body = api.get(url).json()
    assert (body["metric"], body["tolerance"], body["allow_reindex"]) == ("ndcg@10", 0.01, True)
    response = api.patch(url, {"metric": "recall@100", "tolerance": 0.05}, format="json")
    assert response.status_code == 200, response.content
    assert api.patch(url, {"metric": "bleu"}, format="json").status_code == 400
    assert other_api.patch(url, {"tolerance": 0.5}, format="json").status_code == 404
    job, _ = job_submit_checked(user=user, kind="policy", params={"corpus": corpus.pk})
    assert (job.params["corpora"][0]["metric"], job.params["corpora"][0]["tolerance"]) == (
        "recall@100",
        0.05,
    )


def test_every_candidate_is_scored_with_the_corpus_exclude_self_setting(api, user, lineage):
    corpus, _, _ = qdc_wins(user, lineage)
    url = f"/api/v1/corpora/{corpus.pk}/policy/"
    assert api.patch(url, {"exclude_self": True}, format="json").status_code == 200
    job = _policy(user, corpus=corpus.pk, allow_reindex=False, apply=False)
    report = job.result["corpora"][0]
    assert report["exclude_self"] is True
    runs = [c["eval_run"] for c in report["candidates"] if c["status"] == "evaluated"]
    assert len(runs) >= 3
    assert all(EvalRun.objects.get(pk=pk).params["exclude_self"] for pk in runs)
    asked = _policy(user, corpus=corpus.pk, allow_reindex=False, apply=False, exclude_self=False)
    assert asked.result["corpora"][0]["exclude_self"] is False
    response = api.post(
        "/api/v1/jobs/",
        {"kind": "policy", "params": {"corpus": corpus.pk, "exclude_self": "yes"}},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "params.exclude_self"


def test_the_schedule_submits_one_policy_job_per_corpus_of_the_owner(user, other_user, lineage):
    from workers.tasks.schedules import serving_policy_corpora

    mine, _, _ = qdc_wins(user, lineage)
    qdc_wins(other_user, lineage)
    first = serving_policy_corpora(owner=user.username)
    assert [(r["corpus"], r["outcome"]) for r in first] == [(mine.pk, "submitted")]
    again = serving_policy_corpora(owner=user.username)
    assert again[0]["job"] is None and "already" in again[0]["outcome"]


def test_a_finetune_with_then_policy_submits_one_policy_job_for_the_child(user, lineage):
    from embedhub.continual.services.policy import policy_after_finetune

    _, v2 = lineage
    qdc_wins(user, lineage)
    finetune = Job.objects.create(owner=user, kind="finetune", params={"then_policy": True})
    first = policy_after_finetune(job=finetune, result={"model_version": v2.pk})
    again = policy_after_finetune(job=finetune, result={"model_version": v2.pk})
    assert first["policy_job"] == again["policy_job"] is not None  # a retry submits no second
    policy_job = Job.objects.get(pk=first["policy_job"])
    assert policy_job.kind == "policy" and policy_job.params["corpora"][0]["model_version"] == v2.pk


def _assert_exactly_once(index: VectorIndex, corpus, encoder: str) -> None:
    """One row per document, each the encoder's own vector for that document's text."""
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT document_id, embedding::text FROM {index.table_name} ORDER BY document_id"
        )
        rows = cur.fetchall()
    docs = list(corpus.documents.order_by("pk").values_list("pk", "text"))
    assert [doc for doc, _ in rows] == [pk for pk, _ in docs]
    expected = load_encoder(encoder).encode([text for _, text in docs], kind="document")
    vectors = np.array([eval(text) for _, text in rows], dtype=np.float32)  # noqa: S307
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_a_policy_job_builds_each_corpus_shadow_through_shards_of_its_own(
    user,
    lineage,
    progress_history,  # noqa: F811
):
    corpora = [qdc_wins(user, lineage)[0] for _ in range(2)]
    # All of the user's corpora in one job: 40 documents each, in shards of 15.
    job = _policy(user, shard_size=15, batch_size=8)
    assert [plan["corpus"] for plan in job.params["corpora"]] == [c.pk for c in corpora]
    assert job.shards.count() == 6
    for corpus, report in zip(corpora, job.result["corpora"], strict=True):
        reindex = report["candidates"][-1]
        assert reindex["status"] == "evaluated", reindex
        shadow = VectorIndex.objects.get(pk=reindex["index"])
        shards = list(job.shards.filter(params__index=shadow.pk).order_by("pk"))
        assert [s.params["shard"]["number"] for s in shards] == [1, 2, 3]
        assert [s.progress_total for s in shards] == [15, 15, 10]
        assert all(s.status == "succeeded" and s.corpus_id == corpus.pk for s in shards)
        assert shadow.state == "retired" and shadow.vector_count == 40  # lost to qdc
        assert tables.hnsw_exists(table=shadow.table_name)
        _assert_exactly_once(shadow, corpus, f"fake:{DIM}")

    # Steps only ever rise to the total; within each build (steps 4..44 of a corpus's 45)
    # they are the shards' document sums mapped onto it, none rolled up as a raw count.
    running = [done for status, done, _ in progress_history(job.pk) if status == "running"]
    assert running == sorted(running) and job.progress_done == job.progress_total == 90
    assert job.progress_unit == "steps"
    for base in (0, 45):
        in_build = sorted({done for done in running if base + 4 <= done <= base + 44})
        assert in_build == [base + 4, base + 19, base + 34, base + 44], running


def _judged_test_set(owner, corpus) -> QuerySet:
    query_set = QuerySet.objects.create(owner=owner, corpus=corpus, name="test")
    Query.objects.create(query_set=query_set, external_id="q1", text="w7")
    Qrel.objects.create(query_set=query_set, query_external_id="q1", document_external_id="d1")
    return query_set


def test_cancelling_a_policy_job_stops_its_shards_and_a_retry_resumes_the_shadow_build(
    user, lineage, start_worker
):
    v1, v2 = lineage
    encoder = f"fake:{DIM}@60ms"  # sleeps per batch: the build takes long enough to stop
    corpus, _ = _corpus(user, v1, n_docs=300, encoder=encoder)
    _judged_test_set(user, corpus)
    start_worker("policy")
    params = {"corpus": corpus.pk, "shard_size": 100, "batch_size": 4}
    job, _ = job_submit_checked(user=user, kind="policy", params=params)
    wait_until(
        lambda: (
            job.shards.filter(status="succeeded").exists()
            and job.shards.filter(status="running", progress_done__gt=0).exists()
        ),
        timeout=120,
        what="a shard done and the next one midway",
    )
    job_cancel(job=Job.objects.get(pk=job.pk))
    job = wait_for_job(job.pk, timeout=60)
    assert job.status == "cancelled", job.error
    wait_until(
        lambda: not job.shards.filter(status__in=["queued", "running"]).exists(),
        timeout=60,
        what="every shard stopped",
    )
    finished = set(job.shards.filter(status="succeeded").values_list("pk", flat=True))
    assert finished and job.shards.filter(status="cancelled").exists()
    shadow = VectorIndex.objects.get(corpus=corpus, model_version=v2)
    assert shadow.state == "building" and not tables.hnsw_exists(table=shadow.table_name)

    job_retry(job=job)
    job = wait_for_job(job.pk, timeout=180)
    assert job.status == "succeeded", job.error
    shards = list(job.shards.order_by("pk"))
    assert len(shards) == 3 and all(s.status == "succeeded" for s in shards)  # none anew
    assert all(s.attempts == 1 for s in shards if s.pk in finished)  # kept, not re-run
    resumed = [s for s in shards if s.pk not in finished]
    assert any(s.result["skipped_unchanged"] > 0 for s in resumed)  # the one cut midway
    assert job.result["corpora"][0]["candidates"][-1]["index"] == shadow.pk
    shadow.refresh_from_db()
    assert shadow.vector_count == 300 and tables.hnsw_exists(table=shadow.table_name)
    _assert_exactly_once(shadow, corpus, encoder)


def test_a_cancel_stops_a_policy_job_inside_a_candidate_evaluation(user, lineage, monkeypatch):
    """Each chunk of encoded queries is a cancel point: a cancel requested while the qdc
    candidate encodes stops the job there, before that evaluation is stored and before any
    shadow is built."""
    corpus, index, _ = qdc_wins(user, lineage)
    monkeypatch.setattr(evaluation_services, "ENCODE_CHUNK", 4)
    job, _ = job_submit_checked(user=user, kind="policy", params={"corpus": corpus.pk})
    encode = qdc.query_vectors

    def cancel_during_qdc(**kwargs):
        if kwargs["compensation"] == "qdc":
            job_cancel(job=Job.objects.get(pk=job.pk))
        return encode(**kwargs)

    monkeypatch.setattr(qdc, "query_vectors", cancel_during_qdc)
    assert job_execute(job_id=job.pk, worker="test@inline") == "cancelled"
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert EvalRun.objects.filter(query_set__corpus=corpus).count() == 2  # current, none
    assert not VectorIndex.objects.filter(corpus=corpus).exclude(pk=index.pk).exists()
    assert job.progress_done == 2 and "old_index_qdc: encoded 4/12" in job.progress_note


@pytest.mark.slow
def test_policy_job_on_the_real_model(user):
    """all-MiniLM-L6-v2 on a tiny corpus: a child version sharing its weights, with a small
    drift vector, gives every candidate a real measurement to decide on."""
    v0 = ModelVersionFactory()  # the bundled model
    rng = np.random.default_rng(3)
    delta = (0.05 * rng.normal(size=384) / np.sqrt(384)).astype(np.float32)
    v1 = ModelVersionFactory(model=v0.model, parent=v0, drift=delta.tolist(), drift_norm=0.05)
    corpus = CorpusFactory(owner=user)
    facts = {
        f"t{i}": f"The {animal} eats {food} and lives in the {place}."
        for i, (animal, food, place) in enumerate(
            [
                ("otter", "fish", "river"),
                ("camel", "dates", "desert"),
                ("panda", "bamboo", "forest"),
                ("penguin", "krill", "antarctic"),
                ("koala", "eucalyptus", "woodland"),
                ("goat", "grass", "mountains"),
                ("bat", "insects", "caves"),
                ("frog", "flies", "pond"),
            ]
        )
    }
    add_documents(corpus, facts)
    index = build_index(owner=user, corpus=corpus, model_version=v0, encoder="")
    corpus.active_index = index
    corpus.save(update_fields=["active_index"])
    query_set = QuerySet.objects.create(owner=user, corpus=corpus, name="test")
    questions = ["what lives in a river", "which animal eats bamboo", "who lives in caves"]
    Query.objects.bulk_create(
        Query(query_set=query_set, external_id=f"q{i}", text=q) for i, q in enumerate(questions)
    )
    for qid, doc in (("q0", "t0"), ("q1", "t2"), ("q2", "t6")):
        Qrel.objects.create(query_set=query_set, query_external_id=qid, document_external_id=doc)
    job = _policy(user, corpus=corpus.pk)
    assert job.params["corpora"][0]["model_version"] == v1.pk
    report = job.result["corpora"][0]
    _check_recorded(user, report)
    assert all(
        c["status"] == "evaluated" for c in report["candidates"] if c["name"] != "old_index_adapter"
    )
    assert report["candidates"][0]["metric"] > 0.5  # the real model finds these facts
