"""Progress is always true: for every job kind, `progress_done` never goes backwards while
the job runs, and a succeeded job's progress reaches its total.

A trigger on the jobs table records every UPDATE, so the test sees each progress write the
job made (polling would miss the one that went backwards). Jobs run through job_execute,
the worker's own code path, in this process; the ML kinds run the real model at tiny sizes.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from django.db import connection

from embedhub.corpora.models import Document
from embedhub.corpora.services import upload_folder
from embedhub.evaluation.models import Qrel, Query, QuerySet
from embedhub.jobs.kinds import job_kinds
from embedhub.jobs.models import Job
from embedhub.jobs.runner import JobContext, job_execute
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors.models import VectorIndex
from tests.audits.conftest import DOCUMENTS, MESSAGE, SMALL, VITAMIN_D
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from tests.factories import CorpusFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db(transaction=True)

RECORDER = """
CREATE TABLE test_progress_log (
    seq bigserial PRIMARY KEY, job_id bigint, status text, done bigint, total bigint
);
CREATE FUNCTION test_progress_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_progress_log (job_id, status, done, total)
    VALUES (NEW.id, NEW.status, NEW.progress_done, NEW.progress_total);
    RETURN NEW;
END $$;
CREATE TRIGGER test_progress_record AFTER UPDATE ON jobs_job
    FOR EACH ROW EXECUTE FUNCTION test_progress_record();
"""
DROP = """
DROP TRIGGER IF EXISTS test_progress_record ON jobs_job;
DROP FUNCTION IF EXISTS test_progress_record();
DROP TABLE IF EXISTS test_progress_log;
"""


@pytest.fixture
def progress_history(transactional_db):
    with connection.cursor() as cur:
        cur.execute(DROP + RECORDER)

    def history(job_id: int) -> list[tuple[str, int, int | None]]:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT status, done, total FROM test_progress_log WHERE job_id = %s ORDER BY seq",
                [job_id],
            )
            return cur.fetchall()

    yield history
    with connection.cursor() as cur:
        cur.execute(DROP)


def _run_and_check(user, history, kind: str, params: dict, *, min_steps: int = 2) -> Job:
    job, _ = job_submit_checked(user=user, kind=kind, params=params)
    assert job_execute(job_id=job.pk, worker="test@inline") == "succeeded", Job.objects.get(
        pk=job.pk
    ).error
    job.refresh_from_db()
    rows = history(job.pk)
    running = [done for status, done, _ in rows if status == Job.Status.RUNNING]
    backwards = [(a, b) for a, b in zip(running, running[1:], strict=False) if b < a]
    assert not backwards, f"{kind}: progress went backwards {backwards} in {running}"
    assert len(set(running)) >= min_steps, f"{kind}: too few progress reports to judge: {running}"
    assert job.progress_total and job.progress_done == job.progress_total, (kind, rows[-3:])
    return job


def test_every_kind_is_covered_here():
    covered = {"ingest", "embed", "evaluate", "finetune", "reindex", "audit", "policy"}
    assert {kind.name for kind in job_kinds()} == covered == set(Job.Kind.values)


def test_ingest_progress_counts_bytes_up_to_the_file_size(user, progress_history):
    corpus = CorpusFactory(owner=user)
    folder = upload_folder(owner_id=user.pk) / "progress-test"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"_id": f"d{i}", "text": f"document number {i} " * 20}) for i in range(3000)
    ]
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n")
    job = _run_and_check(
        user, progress_history, "ingest", {"corpus": corpus.pk, "path": "progress-test/docs.jsonl"}
    )
    assert job.progress_unit == "bytes" and corpus.documents.count() == 3000


def test_embed_progress_rises_batch_by_batch_to_the_document_count(user, progress_history):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, numbered_texts(200))
    job = _run_and_check(
        user,
        progress_history,
        "embed",
        {"corpus": corpus.pk, "encoder": "fake:8", "batch_size": 16},
        min_steps=5,
    )
    assert job.progress_done == 200


def test_chunked_embed_progress_never_rewinds_between_batches(user, progress_history):
    # Chunked embeds pass a cancel point after every batch: it must not write old progress.
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {f"d{i}": "many words in a long passage " * 30 for i in range(1200)})
    job = _run_and_check(
        user,
        progress_history,
        "embed",
        {
            "corpus": corpus.pk,
            "encoder": "fake:8",
            "batch_size": 8,
            "chunking": "chunk",
            "chunk_window": 32,
            "chunk_overlap": 8,
        },
        min_steps=3,
    )
    index = VectorIndex.objects.get(pk=job.params["index"])
    assert index.vector_count > 1200  # really chunked: several vectors per document


def test_evaluate_progress_counts_queries(user, progress_history):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, numbered_texts(50))
    index = build_index(owner=user, corpus=corpus, model_version=ModelVersionFactory())
    query_set = QuerySet.objects.create(owner=user, corpus=corpus, name="many")
    Query.objects.bulk_create(
        Query(query_set=query_set, external_id=f"q{i}", text=f"w{i}") for i in range(300)
    )
    Qrel.objects.bulk_create(
        Qrel(query_set=query_set, query_external_id=f"q{i}", document_external_id=f"d{i % 50}")
        for i in range(300)
    )
    job = _run_and_check(
        user, progress_history, "evaluate", {"index": index.pk, "query_set": query_set.pk}
    )
    assert job.progress_done == 300


def test_reindex_progress_stays_at_the_total_through_the_gate(user, progress_history):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, numbered_texts(120))
    old = ModelVersionFactory()
    new = ModelVersionFactory(model=old.model, version=old.version + 1)
    active = build_index(owner=user, corpus=corpus, model_version=old, encoder="fake:8")
    corpus.active_index = active
    corpus.save(update_fields=["active_index"])
    query_set = QuerySet.objects.create(owner=user, corpus=corpus, name="gate")
    Query.objects.create(query_set=query_set, external_id="q1", text="w7")
    Qrel.objects.create(query_set=query_set, query_external_id="q1", document_external_id="d1")
    job = _run_and_check(
        user,
        progress_history,
        "reindex",
        {
            "corpus": corpus.pk,
            "model_version": new.pk,
            "batch_size": 16,
            "gate": {"query_set": query_set.pk, "tolerance": 0.1},
        },
    )
    assert job.result["gate"] is not None and job.progress_done == 120


def test_policy_progress_rises_through_candidates_and_the_shadow_build(user, progress_history):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, numbered_texts(120))
    old = ModelVersionFactory()
    new = ModelVersionFactory(model=old.model, parent=old)
    active = build_index(owner=user, corpus=corpus, model_version=old, encoder="fake:8")
    corpus.active_index = active
    corpus.save(update_fields=["active_index"])
    query_set = QuerySet.objects.create(owner=user, corpus=corpus, name="test")
    Query.objects.create(query_set=query_set, external_id="q1", text="w7")
    Qrel.objects.create(query_set=query_set, query_external_id="q1", document_external_id="d1")
    job = _run_and_check(
        user, progress_history, "policy", {"corpus": corpus.pk, "batch_size": 16}, min_steps=5
    )
    assert job.progress_unit == "steps" and job.params["corpora"][0]["model_version"] == new.pk
    assert job.result["corpora"][0]["candidates"]


@pytest.mark.slow
def test_finetune_progress_counts_every_step_on_the_real_model(user, progress_history):
    parent = ModelVersionFactory()  # the bundled all-MiniLM-L6-v2
    corpus = CorpusFactory(owner=user)
    texts = {f"t{i}": f"Item {i} is a made-up thing called zorb{i} from Kelvara." for i in range(8)}
    add_documents(corpus, texts)
    query_set = QuerySet.objects.create(owner=user, corpus=corpus, name="train")
    Query.objects.bulk_create(
        Query(query_set=query_set, external_id=f"q{i}", text=f"what is zorb{i}?") for i in range(8)
    )
    Qrel.objects.bulk_create(
        Qrel(query_set=query_set, query_external_id=f"q{i}", document_external_id=f"t{i}")
        for i in range(8)
    )
    config = {"max_steps": 4, "batch_size": 4, "max_tokens": 32, "negatives_per_query": 0}
    job = _run_and_check(
        user,
        progress_history,
        "finetune",
        {"parent": parent.pk, "query_set": query_set.pk, "config": config},
        min_steps=4,
    )
    assert job.progress_unit == "steps" and job.progress_total == 4


@pytest.mark.slow
def test_audit_progress_counts_passages_on_the_real_model(user, progress_history):
    corpus = CorpusFactory(owner=user)
    Document.objects.bulk_create(
        Document(
            corpus=corpus,
            external_id=f"d{i}",
            text=text,
            content_hash=hashlib.sha256(text.encode()).hexdigest(),
        )
        for i, text in enumerate(DOCUMENTS)
    )
    version = ModelVersionFactory()
    index = build_index(owner=user, corpus=corpus, model_version=version, encoder="")
    params = {
        "index": index.pk,
        "concept": "vitamin D",
        "queries": VITAMIN_D,
        "message": MESSAGE,
        "budget": 2,
        **SMALL,
        "iterations": 2,
    }
    job = _run_and_check(user, progress_history, "audit", params)
    assert job.progress_done == 2


def test_a_cancel_point_after_progress_writes_no_older_number(user, progress_history):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, numbered_texts(3))
    job, _ = job_submit_checked(
        user=user, kind="embed", params={"corpus": corpus.pk, "encoder": "fake:8"}
    )
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, worker="w", attempts=1)
    job.refresh_from_db()
    ctx = JobContext(job)
    ctx.progress(2, total=3)
    ctx.check_cancel()
    ctx.check_cancel()
    assert [done for _, done, _ in progress_history(job.pk)][-3:] == [2, 2, 2]
