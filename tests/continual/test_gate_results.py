"""Gate results belong to (version, corpus, query set); reindex targets and schedules only
move a corpus to versions its owner may see; promote and rollback act on the caller's own
corpus and write nothing on the model version."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.test import Client
from django.utils import timezone

from embedhub.continual.models import GateResult
from embedhub.continual.selectors import newest_version
from embedhub.core.errors import ApplicationError
from embedhub.evaluation.models import Qrel, Query, QuerySet
from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_execute
from embedhub.jobs.submission import job_submit_checked
from embedhub.registry.models import ModelVersion
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from tests.factories import CorpusFactory, ModelVersionFactory
from workers.tasks.schedules import reindex_corpus, reindex_stale_corpora


@pytest.fixture
def lineage(db):
    v1 = ModelVersionFactory()
    v2 = ModelVersionFactory(model=v1.model, parent=v1)  # shared, like a published version
    return v1, v2


def _indexed(owner, name: str, version: ModelVersion):
    """A corpus whose first (hence active) index is built with `version`."""
    corpus = CorpusFactory(owner=owner, name=name)
    add_documents(corpus, numbered_texts(8))
    build_index(owner=owner, corpus=corpus, model_version=version)
    corpus.refresh_from_db()
    assert corpus.active_index.model_version_id == version.pk
    return corpus


def _judged(corpus, n: int = 4, *, name: str = "gate") -> QuerySet:
    """Query i is document i's text (empty titles: the fake encoder finds it exactly)."""
    query_set = QuerySet.objects.create(owner=corpus.owner, corpus=corpus, name=name)
    docs = list(corpus.documents.order_by("id")[:n])
    Query.objects.bulk_create(
        Query(query_set=query_set, external_id=f"q{i}", text=d.text) for i, d in enumerate(docs)
    )
    Qrel.objects.bulk_create(
        Qrel(query_set=query_set, query_external_id=f"q{i}", document_external_id=d.external_id)
        for i, d in enumerate(docs)
    )
    return query_set


def _verdict(version, corpus, *, passed: bool) -> GateResult:
    return GateResult.objects.create(
        model_version=version,
        corpus=corpus,
        query_set=_judged(corpus),
        metric="ndcg@10",
        new_value=0.5 if passed else 0.1,
        active_value=0.5,
        tolerance=0.01,
        passed=passed,
    )


def _reindex(client, **params):
    return client.post("/api/v1/jobs/", {"kind": "reindex", "params": params}, format="json")


@pytest.mark.django_db
def test_a_failed_gate_keeps_only_that_corpus_off_the_version(api, user, lineage):
    v1, v2 = lineage
    failed_here, elsewhere = _indexed(user, "a", v1), _indexed(user, "b", v1)
    _verdict(v2, failed_here, passed=False)
    assert newest_version(corpus=failed_here, model_id=v1.model_id) == v1
    assert newest_version(corpus=elsewhere, model_id=v1.model_id) == v2
    assert _reindex(api, corpus=failed_here.pk).json()["error"]["code"] == "up_to_date"
    response = _reindex(api, corpus=elsewhere.pk)
    assert response.status_code == 202 and response.json()["params"]["model_version"] == v2.pk


@pytest.mark.django_db
def test_only_gated_asks_whether_the_version_passed_a_gate_on_this_corpus(
    api, other_api, user, other_user, lineage
):
    v1, v2 = lineage
    passed_here, mine_ungated = _indexed(user, "a", v1), _indexed(user, "b", v1)
    theirs = _indexed(other_user, "theirs", v1)
    _verdict(v2, passed_here, passed=True)
    _verdict(v2, theirs, passed=True)  # another tenant's judgement says nothing about mine
    response = _reindex(api, corpus=passed_here.pk, only_gated=True)
    assert response.status_code == 202 and response.json()["params"]["model_version"] == v2.pk
    refused = _reindex(api, corpus=mine_ungated.pk, only_gated=True)
    assert refused.status_code == 400, refused.content
    assert refused.json()["error"]["message"] == (
        "params.model_version: no ready version to reindex with that passed a gate on this corpus"
    )
    assert _reindex(other_api, corpus=theirs.pk, only_gated=True).status_code == 202


@pytest.mark.django_db(transaction=True)
def test_a_gated_reindex_records_its_verdict_for_its_corpus_and_writes_nothing_on_the_version(
    user, lineage
):
    v1, v2 = lineage
    gated, other = _indexed(user, "gated", v1), _indexed(user, "other", v1)
    before = ModelVersion.objects.filter(pk=v2.pk).values().get()
    query_set = _judged(gated)
    params = {"corpus": gated.pk, "gate": {"query_set": query_set.pk, "tolerance": 0.01}}
    job, _ = job_submit_checked(user=user, kind="reindex", params=params)
    job_execute(job_id=job.pk, worker="test@inline")
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.result["gate"]["passed"] is True and job.result["activated"] is True

    verdict = GateResult.objects.get()
    assert (verdict.model_version, verdict.corpus, verdict.query_set) == (v2, gated, query_set)
    assert (verdict.job_id, verdict.passed, verdict.tolerance) == (job.pk, True, 0.01)
    assert verdict.new_value == pytest.approx(1.0) and verdict.active_value == pytest.approx(1.0)
    assert {verdict.new_eval_run.index_id, verdict.active_eval_run.index_id} == {
        job.result["index"],
        job.result["previous_index"],
    }
    assert ModelVersion.objects.filter(pk=v2.pk).values().get() == before
    page = Client()
    page.force_login(user)
    assert "gate passed on gated" in page.get("/models/").content.decode()
    # The other corpus has no verdict: to only_gated, v2 is untested there.
    with pytest.raises(ApplicationError, match="passed a gate on this corpus"):
        job_submit_checked(
            user=user, kind="reindex", params={"corpus": other.pk, "only_gated": True}
        )


@pytest.mark.django_db
def test_the_stale_corpora_schedule_never_moves_a_corpus_to_another_users_private_version(
    user, other_user
):
    v1 = ModelVersionFactory()
    private = ModelVersionFactory(
        model=v1.model, parent=v1, owner=other_user, visibility="private"
    )  # what Mallory's fine-tune registers
    alices, mallorys = _indexed(user, "alices", v1), _indexed(other_user, "mallorys", v1)

    (outcome,) = reindex_stale_corpora()
    assert outcome["corpus"] == mallorys.pk and outcome["outcome"] == "submitted"
    job = Job.objects.get(pk=outcome["job"])
    assert (job.owner, job.params["model_version"]) == (other_user, private.pk)
    assert "is already indexed with" in reindex_corpus(corpus_id=alices.pk)["outcome"]
    named = reindex_corpus(corpus_id=alices.pk, model_version=private.pk)
    assert named["job"] is None and named["outcome"].endswith(
        f"model version {private.pk} not found"
    )
    assert not Job.objects.filter(corpus=alices).exists()

    ModelVersion.objects.filter(pk=private.pk).update(visibility="shared")  # staff published it
    submitted = [r["corpus"] for r in reindex_stale_corpora() if r["job"]]
    assert submitted == [alices.pk]  # Mallory's reindex is still queued: not submitted twice


@pytest.mark.django_db
def test_a_schedule_for_one_account_only_touches_corpora_it_may_manage(
    user, other_user, staff_user, lineage
):
    v1, v2 = lineage
    alices, mallorys = _indexed(user, "alices", v1), _indexed(other_user, "mallorys", v1)
    refused = reindex_corpus(corpus_id=mallorys.pk, owner=user.username)
    assert refused == {"corpus": mallorys.pk, "job": None, "outcome": "no such corpus to manage"}
    assert reindex_corpus(corpus_id=alices.pk, owner="nobody")["job"] is None

    assert [r["corpus"] for r in reindex_stale_corpora(owner=user.username)] == [alices.pk]
    staff_run = reindex_corpus(corpus_id=mallorys.pk, owner=staff_user.username)
    assert Job.objects.get(pk=staff_run["job"]).owner == other_user  # as the corpus's owner

    other_user.is_active = False  # a deactivated account's corpora are left alone
    other_user.save(update_fields=["is_active"])
    Job.objects.all().delete()
    assert [r["corpus"] for r in reindex_stale_corpora()] == [alices.pk]
    assert reindex_corpus(corpus_id=mallorys.pk)["job"] is None


@pytest.mark.django_db
def test_promote_and_rollback_act_only_on_the_callers_own_corpus(
    api, other_api, user, other_user, lineage
):
    v1, v2 = lineage
    corpus = _indexed(user, "alices", v1)
    old = corpus.active_index
    new = build_index(owner=user, corpus=corpus, model_version=v2)
    versions = list(ModelVersion.objects.order_by("pk").values())
    intruder = Client()
    intruder.force_login(other_user)

    assert other_api.post(f"/api/v1/indexes/{new.pk}/activate/").status_code == 404
    assert intruder.post(f"/indexes/{new.pk}/activate/").status_code == 404
    corpus.refresh_from_db()
    assert corpus.active_index_id == old.pk

    assert api.post(f"/api/v1/indexes/{new.pk}/activate/").status_code == 200  # promote
    owner = Client()
    owner.force_login(user)
    assert owner.post(f"/indexes/{old.pk}/activate/").status_code == 302  # roll back
    corpus.refresh_from_db()
    assert corpus.active_index_id == old.pk
    assert list(ModelVersion.objects.order_by("pk").values()) == versions


@pytest.mark.django_db
def test_the_migration_rebuilds_each_triples_latest_verdict_from_gated_reindex_jobs(user, lineage):
    migration = importlib.import_module("embedhub.continual.migrations.0001_gate_result")
    v1, v2 = lineage
    corpus = _indexed(user, "migrated", v1)
    query_set, gone = _judged(corpus), _judged(corpus, name="deleted later")

    def finished(minutes_ago: int, *, query_set_id: int, passed: bool) -> Job:
        gate = {
            "query_set": query_set_id,
            "metric": "ndcg@10",
            "tolerance": 0.02,
            "new": {"eval_run": None, "ndcg@10": 0.4},
            "active": {"eval_run": None, "ndcg@10": 0.5},
            "passed": passed,
        }
        return Job.objects.create(
            owner=user,
            kind="reindex",
            corpus=corpus,
            params={},
            status="succeeded",
            result={"model_version": v2.pk, "gate": gate},
            finished_at=timezone.now() - timedelta(minutes=minutes_ago),
        )

    finished(10, query_set_id=query_set.pk, passed=False)
    latest = finished(5, query_set_id=query_set.pk, passed=True)
    finished(1, query_set_id=gone.pk, passed=False)
    gone.delete()  # its verdict has nothing left to belong to
    migration.gates_from_jobs(django_apps, None)
    verdict = GateResult.objects.get()
    assert (verdict.model_version, verdict.corpus, verdict.query_set) == (v2, corpus, query_set)
    assert (verdict.job, verdict.passed, verdict.tolerance) == (latest, True, 0.02)
    assert (verdict.new_value, verdict.active_value) == (0.4, 0.5)
