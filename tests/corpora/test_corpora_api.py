"""The corpora REST API: CRUD, ownership (404 for others), uploads end to end, 413."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from embedhub.corpora.models import Corpus
from embedhub.jobs.models import Job
from tests.conftest import wait_for_job
from tests.factories import CorpusFactory, DocumentFactory

ROOT = Path(__file__).resolve().parents[2]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.django_db
def test_create_list_filter_get_and_delete(api, user):
    created = api.post("/api/v1/corpora/", {"name": "papers", "description": "d"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["name"] == "papers" and created.json()["document_count"] == 0
    api.post("/api/v1/corpora/", {"name": "news"}, format="json")
    duplicate = api.post("/api/v1/corpora/", {"name": "papers"}, format="json")
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "conflict"

    listed = api.get("/api/v1/corpora/", {"name": "pap"}).json()
    assert listed["count"] == 1 and listed["results"][0]["name"] == "papers"
    assert api.get("/api/v1/corpora/").json()["count"] == 2

    corpus_id = created.json()["id"]
    assert api.get(f"/api/v1/corpora/{corpus_id}/").json()["description"] == "d"
    assert api.delete(f"/api/v1/corpora/{corpus_id}/").status_code == 204
    assert not Corpus.objects.filter(pk=corpus_id).exists()


@pytest.mark.django_db
def test_another_users_corpus_is_a_404_everywhere(other_api, user):
    corpus = CorpusFactory(owner=user)
    DocumentFactory(corpus=corpus, external_id="d1")
    base = f"/api/v1/corpora/{corpus.pk}"

    def upload():
        return {"file": SimpleUploadedFile("c.jsonl", jsonl([{"_id": "x", "text": "y"}]))}

    responses = [
        other_api.get(f"{base}/"),
        other_api.delete(f"{base}/"),
        other_api.get(f"{base}/documents/"),
        other_api.get(f"{base}/documents/d1/"),
        other_api.post(f"{base}/upload/", upload(), format="multipart"),
        other_api.post(
            "/api/v1/corpora/upload/", {"corpus": corpus.pk, **upload()}, format="multipart"
        ),
    ]
    for response in responses:
        assert response.status_code == 404, response.content
        assert response.json()["error"]["code"] == "not_found"
    assert other_api.get("/api/v1/corpora/").json()["count"] == 0
    assert Corpus.objects.filter(pk=corpus.pk).exists() and not Job.objects.exists()


@pytest.mark.django_db
def test_documents_are_listed_paginated_and_fetched_by_external_id(api, user):
    corpus = CorpusFactory(owner=user)
    for i in range(3):
        DocumentFactory(corpus=corpus, external_id=f"doc/{i}")
    listed = api.get(f"/api/v1/corpora/{corpus.pk}/documents/", {"page_size": 2}).json()
    assert listed["count"] == 3 and len(listed["results"]) == 2 and listed["next"]
    one = api.get(f"/api/v1/corpora/{corpus.pk}/documents/", {"external_id": "doc/1"}).json()
    assert [d["external_id"] for d in one["results"]] == ["doc/1"]
    detail = api.get(f"/api/v1/corpora/{corpus.pk}/documents/doc/2/")
    assert detail.status_code == 200 and detail.json()["external_id"] == "doc/2"
    missing = api.get(f"/api/v1/corpora/{corpus.pk}/documents/nope/")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


@pytest.mark.django_db
def test_upload_over_the_limit_is_413_with_the_error_shape(api, user, settings):
    settings.EMBEDHUB_MAX_UPLOAD_BYTES = 1000
    corpus = CorpusFactory(owner=user)
    big = SimpleUploadedFile(
        "big.jsonl", jsonl([{"_id": str(i), "text": "x" * 50} for i in range(100)])
    )
    response = api.post(f"/api/v1/corpora/{corpus.pk}/upload/", {"file": big}, format="multipart")
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "file_too_large" and error["details"]["limit"] == 1000
    assert "1000-byte limit" in error["message"]
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_upload_with_bad_options_is_a_400_naming_the_field(api, user):
    corpus = CorpusFactory(owner=user)
    url = f"/api/v1/corpora/{corpus.pk}/upload/"
    unnamed = SimpleUploadedFile("corpus.txt", b"x")
    response = api.post(url, {"file": unnamed}, format="multipart")
    assert response.status_code == 400 and "format" in response.json()["error"]["message"]
    bad_mapping = {"file": SimpleUploadedFile("c.csv", b"id,text\n1,a\n"), "mapping": "{not json"}
    response = api.post(url, bad_mapping, format="multipart")
    assert response.status_code == 400
    assert "mapping" in response.json()["error"]["details"]["fields"]
    nameless = {"file": SimpleUploadedFile("c.csv", b"id,text\n1,a\n")}
    response = api.post("/api/v1/corpora/upload/", nameless, format="multipart")
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "name"
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_ingest_job_cannot_read_files_outside_the_upload_folder(api, user):
    corpus = CorpusFactory(owner=user)
    params = {"corpus": corpus.pk, "path": "../../../etc/passwd", "format": "csv"}
    response = api.post("/api/v1/jobs/", {"kind": "ingest", "params": params}, format="json")
    assert (
        response.status_code == 400
        and response.json()["error"]["details"]["field"] == "params.path"
    )


def _scifact_zip() -> bytes:
    sample = ROOT / "samples" / "scifact-mini"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sample.rglob("*"):
            if file.is_file():
                zf.write(file, f"scifact-mini/{file.relative_to(sample)}")
    return buffer.getvalue()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_upload_end_to_end_with_a_real_worker(api, user, worker):
    # A new corpus by name, CSV with a mapping, one bad row skipped.
    csv_bytes = b"doc,body,lang\n1,first text,en\n2,,en\n3,third text,fr\n"
    response = api.post(
        "/api/v1/corpora/upload/",
        {
            "file": SimpleUploadedFile("docs.csv", csv_bytes),
            "name": "csv-corpus",
            "mapping": json.dumps({"id": "doc", "text": "body"}),
            "skip_invalid": "true",
        },
        format="multipart",
    )
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    assert response["Location"] == f"/api/v1/jobs/{job_id}/"
    assert response.json()["kind"] == "ingest"
    job = wait_for_job(job_id, timeout=60)
    assert job.status == "succeeded", job.error
    assert job.result["inserted"] == 2
    assert job.result["skipped"] == [
        {"file": "docs.csv", "line": 3, "field": "text", "problem": "is empty"}
    ]
    assert job.progress_unit == "bytes" and job.progress_done == job.progress_total == len(
        csv_bytes
    )
    corpus = Corpus.objects.get(owner=user, name="csv-corpus")
    listed = api.get(f"/api/v1/corpora/{corpus.pk}/documents/").json()
    assert [(d["external_id"], d["metadata"]) for d in listed["results"]] == [
        ("1", {"lang": "en"}),
        ("3", {"lang": "fr"}),
    ]

    # The shipped BEIR sample as a zip into the same corpus, then a failing upload.
    response = api.post(
        f"/api/v1/corpora/{corpus.pk}/upload/",
        {"file": SimpleUploadedFile("scifact-mini.zip", _scifact_zip())},
        format="multipart",
    )
    job = wait_for_job(response.json()["id"], timeout=60)
    assert job.status == "succeeded", job.error
    assert job.result["inserted"] == 300 and job.result["query_sets"][0]["name"] == "test"
    assert api.get(f"/api/v1/corpora/{corpus.pk}/").json()["document_count"] == 302

    bad = jsonl([{"_id": "new", "text": "ok"}]) + b'{"_id": "broken"\n'
    response = api.post(
        f"/api/v1/corpora/{corpus.pk}/upload/",
        {"file": SimpleUploadedFile("bad.jsonl", bad)},
        format="multipart",
    )
    job = wait_for_job(response.json()["id"], timeout=60)
    assert job.status == "failed"
    assert job.error.startswith("bad.jsonl line 2: json: malformed JSON")
    assert (
        corpus.documents.count() == 302 and not corpus.documents.filter(external_id="new").exists()
    )


@pytest.mark.django_db
def test_a_corpus_with_a_job_queued_or_running_is_not_deleted_until_it_ends(api, user):
    from embedhub.jobs.models import Job
    from embedhub.jobs.services import job_cancel

    corpus = Corpus.objects.create(owner=user, name="busy")
    job = Job.objects.create(owner=user, kind="embed", corpus=corpus, params={}, queue="gpu")
    response = api.delete(f"/api/v1/corpora/{corpus.pk}/")
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "corpus_busy" and error["details"] == {"jobs": [job.pk]}
    assert Corpus.objects.filter(pk=corpus.pk).exists()
    job_cancel(job=job)
    assert api.delete(f"/api/v1/corpora/{corpus.pk}/").status_code == 204


@pytest.mark.django_db
def test_a_corpus_named_only_in_a_running_jobs_params_is_not_deleted(api, user):
    """A policy job over several corpora has no corpus of its own: it names them in params."""
    from embedhub.jobs.models import Job

    corpus = Corpus.objects.create(owner=user, name="planned")
    plan = {"corpora": [{"corpus": corpus.pk}]}
    job = Job.objects.create(owner=user, kind="policy", params=plan, status="running")
    response = api.delete(f"/api/v1/corpora/{corpus.pk}/")
    assert response.status_code == 409, response.content
    assert response.json()["error"]["details"] == {"jobs": [job.pk]}
    assert Corpus.objects.filter(pk=corpus.pk).exists()
