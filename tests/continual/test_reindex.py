"""Reindex: shadow build, gate on nDCG@10, atomic swap, rollback, failure/cancel/kill safety,
retention. In-process tests run the job through job_execute (the worker's own code path);
the kill test uses real worker processes."""

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from embedhub.continual.models import GateResult
from embedhub.continual.services.reindex import indexes_drop_expired
from embedhub.evaluation.models import Qrel, Query, QuerySet
from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_execute
from embedhub.jobs.services import job_retry, jobs_reap
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors.models import VectorIndex
from tests.conftest import wait_for_job, wait_until
from tests.factories import ModelVersionFactory
from tests.vectors.conftest import make_documents

# Transactional: job_execute runs in-process exactly as in a worker (it closes connections
# left in a transaction, and its heartbeat thread needs committed rows).
pytestmark = pytest.mark.django_db(transaction=True)


def _run(job) -> Job:
    job_execute(job_id=job.pk, worker="test@inline")
    job.refresh_from_db()
    return job


def _embed(user, corpus, version, encoder="fake:64") -> VectorIndex:
    params = {"corpus": corpus.pk, "model_version": version.pk, "encoder": encoder}
    job = _run(job_submit_checked(user=user, kind="embed", params=params)[0])
    assert job.status == "succeeded", job.error
    return VectorIndex.objects.get(pk=job.params["index"])


def _reindex(user, **params) -> Job:
    return job_submit_checked(user=user, kind="reindex", params=params)[0]


def _table_exists(table: str) -> bool:
    with connection.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", [table])
        return cur.fetchone()[0] is not None


@pytest.fixture
def lineage(db):
    v1 = ModelVersionFactory()
    v2 = ModelVersionFactory(model=v1.model, parent=v1)  # the sequence numbers it after v1
    return v1, v2


def test_reindex_swaps_the_active_index_and_the_old_one_can_be_rolled_back(
    api, user, corpus, lineage
):
    v1, v2 = lineage
    make_documents(corpus, 40)
    old = _embed(user, corpus, v1)
    job = _reindex(user, corpus=corpus.pk)
    assert job.params["model_version"] == v2.pk  # default: newest version of the active's model
    shadow = VectorIndex.objects.get(pk=job.params["index"])
    assert shadow.encoder == "fake:64" and shadow.state == "building"  # built like the active
    corpus.refresh_from_db()
    assert corpus.active_index_id == old.pk  # nothing changes until the job swaps

    job = _run(job)
    assert job.status == "succeeded", job.error
    assert job.result["activated"] is True and job.result["previous_index"] == old.pk
    corpus.refresh_from_db()
    old.refresh_from_db()
    shadow.refresh_from_db()
    assert corpus.active_index_id == shadow.pk
    assert (shadow.state, shadow.vector_count, shadow.model_version_id) == ("ready", 40, v2.pk)
    assert old.state == "retired" and old.retired_at is not None

    response = api.post(
        "/api/v1/jobs/", {"kind": "reindex", "params": {"corpus": corpus.pk}}, format="json"
    )
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "up_to_date"

    response = api.post(f"/api/v1/indexes/{old.pk}/activate/")  # rollback
    assert response.status_code == 200, response.content
    corpus.refresh_from_db()
    shadow.refresh_from_db()
    assert corpus.active_index_id == old.pk and shadow.state == "retired"


def test_second_reindex_of_a_corpus_is_refused_while_one_is_queued(api, user, corpus, lineage):
    v1, _ = lineage
    make_documents(corpus, 5)
    _embed(user, corpus, v1)
    first = _reindex(user, corpus=corpus.pk)
    response = api.post(
        "/api/v1/jobs/", {"kind": "reindex", "params": {"corpus": corpus.pk}}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "reindex_running"
    assert f"job {first.pk}" in response.json()["error"]["message"]


def test_a_failed_reindex_is_not_retried_while_another_of_its_corpus_is_queued(
    api, user, corpus, lineage
):
    v1, _ = lineage
    make_documents(corpus, 5)
    _embed(user, corpus, v1)
    first = _reindex(user, corpus=corpus.pk)
    Job.objects.filter(pk=first.pk).update(status=Job.Status.FAILED)
    second = _reindex(user, corpus=corpus.pk)  # a failed reindex blocks nothing
    response = api.post(f"/api/v1/jobs/{first.pk}/retry/")
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "reindex_running"
    assert f"reindex job {second.pk}" in response.json()["error"]["message"]
    assert Job.objects.get(pk=first.pk).status == Job.Status.FAILED

    Job.objects.filter(pk=second.pk).update(status=Job.Status.CANCELLED)
    response = api.post(f"/api/v1/jobs/{first.pk}/retry/")
    assert response.status_code == 202, response.content


def test_reindex_of_another_users_corpus_is_not_found(other_api, user, corpus, lineage):
    make_documents(corpus, 5)
    _embed(user, corpus, lineage[0])
    response = other_api.post(
        "/api/v1/jobs/", {"kind": "reindex", "params": {"corpus": corpus.pk}}, format="json"
    )
    assert response.status_code == 404


def _query_set(owner, corpus, n: int) -> QuerySet:
    """Query i is document i's text without its title; document i is its only relevant one."""
    qs = QuerySet.objects.create(owner=owner, corpus=corpus, name="gate")
    docs = list(corpus.documents.order_by("id")[:n])
    Query.objects.bulk_create(
        Query(query_set=qs, external_id=f"q{i}", text=d.text) for i, d in enumerate(docs)
    )
    Qrel.objects.bulk_create(
        Qrel(query_set=qs, query_external_id=f"q{i}", document_external_id=d.external_id)
        for i, d in enumerate(docs)
    )
    return qs


def test_gate_keeps_the_active_index_when_ndcg_drops_and_swaps_when_it_holds(user, corpus, lineage):
    v1, v2 = lineage
    make_documents(corpus, 30)
    active = _embed(user, corpus, v1, encoder="")  # the real model: finds each doc by its text
    gate = {"query_set": _query_set(user, corpus, 10).pk, "tolerance": 0.01}

    # Hash vectors of "text" and "title text" are unrelated: the shadow ranks at random.
    job = _run(_reindex(user, corpus=corpus.pk, model_version=v2.pk, encoder="fake:384", gate=gate))
    assert job.status == "succeeded", job.error
    result = job.result["gate"]
    assert result["passed"] is False and job.result["activated"] is False
    assert result["new"]["ndcg@10"] < result["active"]["ndcg@10"] - 0.01
    assert result["active"]["index"] == active.pk and result["active"]["n_queries"] == 10
    corpus.refresh_from_db()
    assert corpus.active_index_id == active.pk
    assert VectorIndex.objects.get(pk=job.result["index"]).state == "retired"  # kept, activatable
    verdict = GateResult.objects.get(model_version=v2, corpus=corpus, query_set=gate["query_set"])
    assert (verdict.passed, verdict.job_id, verdict.pk) == (False, job.pk, result["gate_result"])
    assert verdict.new_eval_run_id == result["new"]["eval_run"]
    assert verdict.active_value == pytest.approx(result["active"]["ndcg@10"])

    job = _run(_reindex(user, corpus=corpus.pk, model_version=v2.pk, encoder="", gate=gate))
    assert job.status == "succeeded", job.error
    result = job.result["gate"]
    assert result["passed"] is True and job.result["activated"] is True
    # Same weights under both versions: the gate sees equal quality, within tolerance.
    assert result["new"]["ndcg@10"] == pytest.approx(result["active"]["ndcg@10"], abs=1e-6)
    assert result["new"]["ndcg@10"] > 0.9
    corpus.refresh_from_db()
    assert corpus.active_index_id == job.result["index"]
    # The next gate of the same (version, corpus, query set) replaces the verdict.
    verdict = GateResult.objects.get(model_version=v2, corpus=corpus)
    assert (verdict.passed, verdict.job_id) == (True, job.pk)


def test_failed_or_cancelled_reindex_leaves_the_active_index_untouched(user, corpus, lineage):
    v1, _ = lineage
    make_documents(corpus, 20)
    active = _embed(user, corpus, v1)
    broken = ModelVersionFactory(model=v1.model, parent=v1, artifact_path="/nonexistent/model")
    job = _run(_reindex(user, corpus=corpus.pk, model_version=broken.pk, encoder=""))
    assert job.status == "failed" and "could not load" in job.error
    assert VectorIndex.objects.get(pk=job.params["index"]).state == "failed"
    corpus.refresh_from_db()
    assert corpus.active_index_id == active.pk

    v3 = ModelVersionFactory(model=v1.model, parent=v1)
    job = _reindex(user, corpus=corpus.pk, model_version=v3.pk)
    # Cancel arrives while it runs: the first progress report stops it.
    Job.objects.filter(pk=job.pk).update(cancel_requested=True)
    job = _run(job)
    assert job.status == "cancelled"
    corpus.refresh_from_db()
    active.refresh_from_db()
    assert corpus.active_index_id == active.pk and active.state == "ready"
    assert VectorIndex.objects.get(pk=job.params["index"]).state == "building"

    job = _run(job_retry(job=job))  # a retry resumes the same shadow index and swaps
    assert job.status == "succeeded", job.error
    corpus.refresh_from_db()
    assert corpus.active_index_id == job.params["index"]


def test_retention_drops_only_retired_indexes_past_the_retention_period(
    user, corpus, lineage, settings
):
    v1, v2 = lineage
    make_documents(corpus, 5)
    old = _embed(user, corpus, v1)
    job = _run(_reindex(user, corpus=corpus.pk))
    new = VectorIndex.objects.get(pk=job.result["index"])
    days = settings.EMBEDHUB["INDEX_RETENTION_DAYS"]
    assert indexes_drop_expired(now=timezone.now() + timedelta(days=days - 1)) == []
    assert indexes_drop_expired(now=timezone.now() + timedelta(days=days + 1)) == [old.pk]
    old.refresh_from_db()
    assert old.state == "dropped" and not _table_exists(old.table_name)
    assert _table_exists(new.table_name)


def test_killed_reindex_leaves_active_untouched_and_the_reaper_resumes_it(
    api, user, corpus, lineage, start_worker, settings
):
    v1, v2 = lineage
    make_documents(corpus, 2500, words=4)
    first = start_worker("a")
    params = {"corpus": corpus.pk, "model_version": v1.pk, "encoder": "fake:64"}
    active = VectorIndex.objects.get(
        pk=wait_for_job(job_submit_checked(user=user, kind="embed", params=params)[0].pk).params[
            "index"
        ]
    )
    job = _reindex(user, corpus=corpus.pk, batch_size=4)  # small batches: many checkpoints
    wait_until(
        lambda: Job.objects.filter(pk=job.pk, status="running", progress_done__gte=200).exists(),
        timeout=60,
        interval=0.05,
        what="reindex midway",
    )
    first.kill()
    job.refresh_from_db()
    assert job.status == "running" and 0 < job.progress_done < 2500, job.progress_done
    corpus.refresh_from_db()
    assert corpus.active_index_id == active.pk
    text = "Doc 7 " + corpus.documents.get(external_id="d7").text
    response = api.post(
        "/api/v1/search/", {"corpus": corpus.pk, "query": text, "k": 1}, format="json"
    )
    assert response.status_code == 200 and response.json()["index"] == active.pk

    settings.EMBEDHUB = {**settings.EMBEDHUB, "STALE_AFTER_SECONDS": 0.5}
    time.sleep(1.0)
    start_worker("b")
    assert job.pk in jobs_reap()["requeued"]
    job = wait_for_job(job.pk)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    # Resumed, not restarted: only what the killed attempt had not committed was embedded.
    assert job.result["build"]["embedded"] < 2500
    assert job.result["build"]["vectors"] == 2500
    corpus.refresh_from_db()
    assert corpus.active_index_id == job.params["index"] != active.pk


def test_a_reindex_does_not_inherit_a_fake_encoder_where_the_setting_is_off(
    api, user, corpus, lineage, settings
):
    v1, v2 = lineage
    make_documents(corpus, 10)
    _embed(user, corpus, v1)  # built with the fake encoder while the tests allow it
    settings.EMBEDHUB = {**settings.EMBEDHUB, "ALLOW_FAKE_ENCODER": False}
    params = {"corpus": corpus.pk, "model_version": v2.pk}
    response = api.post("/api/v1/jobs/", {"kind": "reindex", "params": params}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["field"] == "params.encoder"
    assert "the active index uses the 'fake:64' test encoder" in error["message"]
    # Saying encoder "" (the model version itself) is the way out.
    params["encoder"] = ""
    response = api.post("/api/v1/jobs/", {"kind": "reindex", "params": params}, format="json")
    assert response.status_code == 202, response.content
    assert VectorIndex.objects.get(pk=response.json()["params"]["index"]).encoder == ""
