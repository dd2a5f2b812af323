"""Screening at ingest: a corpus setting, off by default. Flagged documents are stored but
quarantined (out of search), named in the ingest result, and approved or rejected by
their owner only."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from embedhub.corpora import screening
from embedhub.corpora.models import Corpus, CorpusScreen, Document, QuarantineDecision
from embedhub.jobs.submission import job_submit_checked
from tests.conftest import wait_for_job
from tests.corpora.conftest import write_jsonl
from tests.factories import ModelVersionFactory
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
    assert len(false_positives) <= 2, false_positives  # ~1 % of 40, with slack
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
