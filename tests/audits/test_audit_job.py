"""An audit on the real model at tiny settings, run by a real worker: cancelled between
passages, retried, resumed with the finished passage kept, then judged against the index."""

from __future__ import annotations

import pytest
from django.db import connection
from transformers import AutoTokenizer

from embedhub.audits.models import RobustnessAudit
from embedhub.audits.selectors import audit_comparison
from embedhub.corpora.models import Document
from tests.audits.conftest import MESSAGE, SMALL
from tests.conftest import wait_for_job, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]


def _table_rows(index) -> tuple[int, int]:
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*), count(DISTINCT document_id) FROM {index.table_name}")
        return cur.fetchone()


def _corpus_state(index) -> dict:
    docs = Document.objects.filter(corpus_id=index.corpus_id)
    return {
        "documents": docs.count(),
        "all_documents": Document.objects.count(),
        "rows": _table_rows(index),
        "vector_count": type(index).objects.get(pk=index.pk).vector_count,
    }


def test_audit_cancel_retry_resumes_and_reports(api, other_api, real_index, query_set, worker):
    before = _corpus_state(real_index)
    params = {
        "index": real_index.pk,
        "query_set": query_set.pk,
        "keyword": "vitamin d",
        "concept": "vitamin D",
        "message": MESSAGE,
        "budget": 2,
        **SMALL,
        "seed": 1,
    }
    response = api.post("/api/v1/jobs/", {"kind": "audit", "params": params}, format="json")
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]

    # Cancel as soon as the first passage is stored, while the second is being optimised.
    def first_passage():
        audit = RobustnessAudit.objects.filter(job_id=job_id).first()
        return audit if audit and audit.passages else None

    wait_until(first_passage, timeout=150, interval=0.05, what="the first passage")
    assert api.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200
    job = wait_for_job(job_id, timeout=60)
    assert job.status == "cancelled", (job.status, job.error)
    audit = RobustnessAudit.objects.get(job_id=job_id)
    assert len(audit.passages) == 1  # the unfinished second passage was discarded
    assert job.checkpoint == {"audit": audit.pk, "passages_done": 1}
    kept = audit.passages[0]

    assert api.post(f"/api/v1/jobs/{job_id}/retry/").status_code == 202
    job = wait_for_job(job_id, timeout=150)
    assert job.status == "succeeded", job.error
    assert RobustnessAudit.objects.filter(job_id=job_id).count() == 1
    audit.refresh_from_db()
    assert audit.state == "complete" and audit.completed_at is not None
    assert len(audit.passages) == 2
    assert audit.passages[0] == kept  # resumed with the next passage, not from scratch
    assert job.result["audit"] == audit.pk and job.result["passages"] == 2

    # The held-in / held-out split and the targets.
    assert len(audit.held_in) == 4 and len(audit.held_out) == 4
    texts = {q["text"] for q in audit.held_in} | {q["text"] for q in audit.held_out}
    assert len(texts) == 8 and all("vitamin d" in t.lower() for t in texts)
    assert len(audit.targets) == 2 and len(audit.targets[0]) == 384

    # Each passage: the objective rose, and the text round-trips through the tokenizer.
    tokenizer = AutoTokenizer.from_pretrained(real_index.model_version.artifact_path)
    for passage in audit.passages:
        assert passage["best_cosine"] > passage["initial_cosine"]
        assert passage["objective_curve"] == sorted(passage["objective_curve"])
        assert passage["objective_curve"][-1] == pytest.approx(passage["best_cosine"])
        assert passage["text"].startswith(MESSAGE + ".")
        ids = tokenizer(passage["text"], add_special_tokens=False)["input_ids"]
        assert ids == passage["token_ids"]
        assert len(passage["trigger_ids"]) == SMALL["trigger_len"]

    # Results: the attack beats the bare message on what it knew; references are present.
    results = audit.results
    held_in = results["held_in"]
    assert held_in["gaslite"]["mean_best_cosine"] > held_in["message_only"]["mean_best_cosine"]
    assert results["depth"] == before["documents"]  # fewer than 100 documents
    for ref in ("gaslite", "message_only", "centroid"):
        scores = results[ref]
        assert scores["n_queries"] == 4 and len(scores["best_ranks"]) == 4
        ladder = [scores[f"appeared@{k}"] for k in (1, 3, 5, 10, 20)]
        assert ladder == sorted(ladder)  # appearing in the top k implies the top k+
    non_concept = results["non_concept"]
    assert non_concept["available"] and non_concept["n_queries"] == 6
    assert "query set" in non_concept["source"]
    assert audit.geometry["n_docs"] == before["documents"]
    assert audit.geometry["n_queries"] == 4
    assert set(audit.timings) >= {"attack_seconds", "evaluate_seconds", "device"}

    # The passages never entered the corpus or the index.
    assert _corpus_state(real_index) == before
    for passage in audit.passages:
        assert not Document.objects.filter(text__contains=passage["text"]).exists()

    # Read API: owner sees it, another user gets 404; the comparison has the pair.
    detail = api.get(f"/api/v1/audits/{audit.pk}/")
    assert detail.status_code == 200
    assert detail.json()["headline"]["gaslite"] == results["gaslite"]["appeared@10"]
    assert other_api.get(f"/api/v1/audits/{audit.pk}/").status_code == 404
    rows = audit_comparison(user=audit.owner, concept="vitamin D")
    assert [(r["concept"], r["model_version"], r["audit"]) for r in rows] == [
        ("vitamin D", real_index.model_version_id, audit.pk)
    ]
