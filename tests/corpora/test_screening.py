"""Screening at ingest: a corpus setting, off by default. Flagged documents are stored but
quarantined (out of search), named in the ingest result, and approved or rejected by
their owner only."""

from __future__ import annotations

import json
import threading

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction

from embedhub.corpora import screening
from embedhub.corpora.models import Corpus, CorpusScreen, Document, QuarantineDecision
from embedhub.jobs.submission import job_submit_checked
from tests.conftest import wait_for_job, wait_until
from tests.corpora.conftest import write_jsonl
from tests.factories import CorpusFactory, ModelVersionFactory
from tests.screening_texts import ADVERSARIAL, clean_documents


def _rows(texts: list[str], prefix: str) -> list[dict]:
    return [{"_id": f"{prefix}{i}", "text": t} for i, t in enumerate(texts)]


def _enable(corpus: Corpus, fpr: float = 0.01) -> Corpus:
    return screening.corpus_screening_update(corpus=corpus, enabled=True, fpr=fpr)


@pytest.mark.django_db
def test_screening_is_off_by_default_and_then_nothing_is_quarantined(tmp_path, ingest, corpus):
    result = ingest(
        write_jsonl(tmp_path / "a.jsonl", _rows(clean_documents(30) + ADVERSARIAL, "d"))
    )
    assert "screening" not in result
    assert not Document.objects.filter(corpus=corpus, quarantined=True).exists()
    assert screening.corpus_screen_refresh(corpus_id=corpus.pk) is None


@pytest.mark.django_db
def test_flagged_documents_are_stored_quarantined_and_named_in_the_result(tmp_path, ingest, corpus):
    _enable(corpus)
    first = ingest(write_jsonl(tmp_path / "a.jsonl", _rows(clean_documents(200), "c")))
    # Nothing to calibrate on before the first upload: imported unscreened, and it says so.
    assert first["screening"]["screened"] == 0 and "fewer than" in first["screening"]["skipped"]
    assert screening.corpus_screen_refresh(corpus_id=corpus.pk)["refit"] is True
    stored = CorpusScreen.objects.get(corpus=corpus)
    assert stored.n_documents == 200 and stored.fpr == 0.01

    new_clean = clean_documents(40, seed=99)
    rows = _rows(new_clean, "n") + _rows(ADVERSARIAL, "adv")
    result = ingest(write_jsonl(tmp_path / "b.jsonl", rows))
    report = result["screening"]
    assert result["inserted"] == len(rows)  # nothing dropped
    assert report["screened"] == len(rows)
    adversarial = {f"adv{i}" for i in range(len(ADVERSARIAL))}
    assert adversarial <= set(report["quarantined_ids"])
    false_positives = set(report["quarantined_ids"]) - adversarial
    # ~1 % of 40 expected. The threshold is calibrated on 100 documents split by a seed
    # (the corpus's id, so it moves with the test order): over 120 seeds this upload got
    # 0, 1, 2 and 3 false positives 46, 57, 16 and 1 times. A broken screen gets far more.
    assert len(false_positives) <= 4, false_positives
    assert report["quarantined"] == len(report["quarantined_ids"])
    held = Document.objects.filter(corpus=corpus, quarantined=True)
    assert set(held.values_list("external_id", flat=True)) == set(report["quarantined_ids"])
    doc = held.get(external_id="adv0")
    assert doc.screen_score > report["threshold"]
    assert set(doc.screen_features) == set(report["features"])

    # Re-uploading the same file screens nothing new and keeps the quarantine as it was.
    again = ingest(write_jsonl(tmp_path / "c.jsonl", rows))
    assert again["screening"]["screened"] == 0 and again["unchanged"] == len(rows)
    assert held.count() == report["quarantined"]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_quarantine_through_a_real_ingest_job_search_and_the_api(api, other_api, user, worker):
    model_version = ModelVersionFactory()
    corpus_id = api.post("/api/v1/corpora/", {"name": "screened"}, format="json").json()["id"]
    settings_url = f"/api/v1/corpora/{corpus_id}/screening/"
    assert api.get(settings_url).json()["enabled"] is False
    response = api.patch(settings_url, {"enabled": True, "fpr": 0.01}, format="json")
    assert response.status_code == 200 and response.json()["enabled"] is True
    assert other_api.patch(settings_url, {"enabled": False}, format="json").status_code == 404

    def upload(rows: list[dict], name: str):
        body = "\n".join(json.dumps(r) for r in rows).encode()
        response = api.post(
            f"/api/v1/corpora/{corpus_id}/upload/",
            {"file": SimpleUploadedFile(name, body)},
            format="multipart",
        )
        assert response.status_code == 202, response.content
        job = wait_for_job(response.json()["id"], timeout=90)
        assert job.status == "succeeded", job.error
        return job.result

    first = upload(_rows(clean_documents(150), "c"), "clean.jsonl")
    assert first["screening"]["screen"]["refit"] is True  # fitted after the first import
    result = upload(_rows(ADVERSARIAL, "adv"), "new.jsonl")
    assert sorted(result["screening"]["quarantined_ids"]) == [
        f"adv{i}" for i in range(len(ADVERSARIAL))
    ]

    params = {"corpus": corpus_id, "model_version": model_version.pk, "encoder": "fake:64"}
    job = wait_for_job(job_submit_checked(user=user, kind="embed", params=params)[0].pk)
    assert job.status == "succeeded", job.error

    def found(text: str) -> list[str]:
        body = {"corpus": corpus_id, "query": text, "k": 5, "exact": True}
        response = api.post("/api/v1/search/", body, format="json")
        assert response.status_code == 200, response.content
        return [r["external_id"] for r in response.json()["results"]]

    # The fake encoder maps identical text to cosine 1: a searchable passage would be first.
    assert "adv0" not in found(ADVERSARIAL[0])

    listed = api.get(f"/api/v1/corpora/{corpus_id}/quarantine/").json()["documents"]
    ids = {d["external_id"]: d["id"] for d in listed}
    assert set(ids) == {f"adv{i}" for i in range(len(ADVERSARIAL))}
    assert all(d["screen_score"] is not None for d in listed)
    base = f"/api/v1/corpora/{corpus_id}/quarantine"
    assert other_api.get(f"{base}/").status_code == 404
    assert other_api.post(f"{base}/{ids['adv0']}/approve/").status_code == 404
    assert Document.objects.get(pk=ids["adv0"]).quarantined  # unchanged by the other user

    approved = api.post(f"{base}/{ids['adv0']}/approve/")
    assert approved.status_code == 200 and approved.json()["decision"] == "approved"
    assert found(ADVERSARIAL[0])[0] == "adv0"  # searchable at once, no re-embedding
    rejected = api.post(f"{base}/{ids['adv1']}/reject/")
    assert rejected.status_code == 200 and rejected.json()["decision"] == "rejected"
    assert not Document.objects.filter(pk=ids["adv1"]).exists()
    decision = QuarantineDecision.objects.get(external_id="adv1")
    assert decision.decided_by == user and decision.excerpt.startswith("Visit BestShoes")
    # Decided documents are out of the quarantine; a second decision on them is a 404.
    assert api.post(f"{base}/{ids['adv0']}/reject/").status_code == 404
    left = api.get(f"{base}/").json()
    assert {d["external_id"] for d in left["documents"]} == {"adv2", "adv3"}
    assert [d["decision"] for d in left["decisions"]] == ["rejected", "approved"]


def _hubness_record(doc: Document, *, content_hash: str | None = None, flagged: bool = True):
    """Record one document's hubness as an index build does, flagged over the bar."""
    return screening.documents_hubness_record(
        corpus_id=doc.corpus_id,
        index_id=1,
        document_ids=[doc.pk],
        content_hashes=[content_hash or doc.content_hash],
        hubness=[9.0],
        z=[7.5],
        flagged=[flagged],
    )


def _quarantined_and_approved(tmp_path, ingest, corpus, user) -> Document:
    ingest(write_jsonl(tmp_path / "a.jsonl", [{"_id": "d0", "text": ADVERSARIAL[0], "v": 1}]))
    doc = Document.objects.get(corpus=corpus, external_id="d0")
    Document.objects.filter(pk=doc.pk).update(quarantined=True)  # as the ingest screen would
    doc.refresh_from_db()
    decision = screening.document_quarantine_approve(document=doc, user=user)
    assert decision.content_hash == doc.content_hash
    return doc


# Transactional: each upload's now() is its own, so the re-upload is newer than the approval.
@pytest.mark.django_db(transaction=True)
def test_an_approved_document_whose_metadata_alone_changes_is_not_quarantined_again(
    tmp_path, ingest, corpus, user
):
    doc = _quarantined_and_approved(tmp_path, ingest, corpus, user)
    approved_at = QuarantineDecision.objects.get(external_id="d0").decided_at
    result = ingest(
        write_jsonl(tmp_path / "b.jsonl", [{"_id": "d0", "text": ADVERSARIAL[0], "v": 2}])
    )
    assert result["metadata_updated"] == 1
    doc.refresh_from_db()
    assert doc.updated_at > approved_at and doc.metadata == {"v": 2}  # newer than the approval

    recorded = _hubness_record(doc)
    assert recorded.quarantined == [] and recorded.approved == 1
    doc.refresh_from_db()
    assert not doc.quarantined and doc.screen_features[screening.HUBNESS_INDEX] == 1


@pytest.mark.django_db
def test_an_approval_does_not_cover_the_documents_next_text(tmp_path, ingest, corpus, user):
    _quarantined_and_approved(tmp_path, ingest, corpus, user)
    ingest(write_jsonl(tmp_path / "b.jsonl", [{"_id": "d0", "text": ADVERSARIAL[1]}]))
    doc = Document.objects.get(corpus=corpus, external_id="d0")

    recorded = _hubness_record(doc)
    assert recorded.quarantined == ["d0"] and recorded.approved == 0
    doc.refresh_from_db()
    assert doc.quarantined and doc.screen_score == 7.5


@pytest.mark.django_db
def test_hubness_read_from_a_vector_of_older_text_is_not_recorded(tmp_path, ingest, corpus):
    ingest(write_jsonl(tmp_path / "a.jsonl", [{"_id": "d0", "text": ADVERSARIAL[0]}]))
    doc = Document.objects.get(corpus=corpus, external_id="d0")

    recorded = _hubness_record(doc, content_hash="0" * 64)
    assert recorded.quarantined == [] and recorded.already_quarantined == recorded.approved == 0
    doc.refresh_from_db()
    assert not doc.quarantined and doc.screen_features is None


@pytest.mark.django_db(transaction=True)
def test_an_approval_committed_while_hubness_is_recorded_is_not_overwritten(user):
    """The record's snapshot predates the approval: it sees the document quarantined and
    unapproved, then waits on the approval's row lock. Once the approval commits it must
    skip the row rather than quarantine it again."""
    corpus = CorpusFactory(owner=user, name="race")
    doc = Document.objects.create(
        corpus=corpus, external_id="d0", text="x", content_hash="a" * 64, quarantined=True
    )
    outcome: dict = {}

    def record() -> None:
        try:
            with connection.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                outcome["pid"] = cur.fetchone()[0]
            outcome["recorded"] = _hubness_record(doc)
        except Exception as exc:  # surfaced by the assertions below
            outcome["error"] = exc
        finally:
            connection.close()

    with transaction.atomic():
        screening.document_quarantine_approve(document=doc, user=user)  # holds the row lock
        recorder = threading.Thread(target=record)
        recorder.start()
        wait_until(lambda: _waiting_on_a_lock(outcome.get("pid")), timeout=20, what="the lock")
    recorder.join(timeout=20)

    assert "error" not in outcome, outcome.get("error")
    recorded = outcome["recorded"]
    assert recorded.quarantined == [] and recorded.already_quarantined == 0
    doc.refresh_from_db()
    assert not doc.quarantined  # the approval stands
    assert doc.screen_features is None  # skipped whole: the next build scores it


def _waiting_on_a_lock(pid: int | None) -> bool:
    if pid is None:
        return False
    with connection.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted)", [pid])
        return cur.fetchone()[0]


@pytest.mark.django_db
def test_the_migration_gives_old_approvals_the_hash_of_a_document_unchanged_since(user):
    from datetime import timedelta
    from importlib import import_module

    backfill = import_module(
        "embedhub.corpora.migrations.0004_quarantinedecision_content_hash"
    ).BACKFILL
    corpus = CorpusFactory(owner=user, name="old")
    kept = Document.objects.create(corpus=corpus, external_id="kept", text="a", content_hash="a")
    changed = Document.objects.create(
        corpus=corpus, external_id="changed", text="b", content_hash="b"
    )
    for doc in (kept, changed, None):
        QuarantineDecision.objects.create(
            corpus=corpus,
            external_id=doc.external_id if doc else "rejected",
            decision="approved" if doc else "rejected",
        )
    later = QuarantineDecision.objects.get(external_id="kept").decided_at + timedelta(hours=1)
    Document.objects.filter(pk=changed.pk).update(updated_at=later)  # changed after approval
    with connection.cursor() as cur:
        cur.execute(backfill)

    hashes = dict(QuarantineDecision.objects.values_list("external_id", "content_hash"))
    assert hashes == {"kept": "a", "changed": "", "rejected": ""}
