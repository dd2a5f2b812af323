"""Helpers for ingest tests: write a file, run the ingest in-process, read back documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_execute


def upload_accepted(api, *, content: bytes, **fields) -> Job:
    """POST docs.jsonl holding `content` to the upload endpoint; its queued ingest job."""
    body = {"file": SimpleUploadedFile("docs.jsonl", content), **fields}
    response = api.post("/api/v1/corpora/upload/", body, format="multipart")
    assert response.status_code == 202, response.content
    return Job.objects.get(pk=response.json()["id"])


def run_inline(job: Job) -> Job:
    """The job run in this process, through the worker's own code path; reloaded."""
    job_execute(job_id=job.pk, worker="test@inline")
    job.refresh_from_db()
    return job


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(user):
    from tests.factories import CorpusFactory

    return CorpusFactory(owner=user, name="demo")


@pytest.fixture
def ingest(corpus):
    """Run the ingest service in-process on a file: ingest(path, fmt=..., **options) -> result."""
    from embedhub.corpora.services import corpus_ingest_file

    def run(path: Path, *, fmt: str | None = None, target=None, **options) -> dict:
        from embedhub.corpora.parsing import sniff_format

        return corpus_ingest_file(
            corpus_id=(target or corpus).pk,
            path=path,
            fmt=fmt or sniff_format(path.name),
            **options,
        )

    return run


def docs(corpus) -> dict:
    return {d.external_id: d for d in corpus.documents.all()}
