"""Helpers for evaluation tests: documents, query sets written as BEIR files, built indexes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from embedhub.corpora.models import Document
from tests.factories import CorpusFactory, ModelVersionFactory


def add_documents(corpus, texts: dict[str, str]) -> None:
    """Documents with empty titles, so the indexed text is exactly the given text."""
    Document.objects.bulk_create(
        Document(
            corpus=corpus,
            external_id=ext,
            title="",
            text=text,
            content_hash=hashlib.sha256(text.encode()).hexdigest(),
        )
        for ext, text in texts.items()
    )


def numbered_texts(n: int, *, prefix: str = "d") -> dict[str, str]:
    return {
        f"{prefix}{i}": f"document {i} about w{i * 7 % 101} and w{i * 13 % 97}" for i in range(n)
    }


def write_beir(
    tmp_path: Path, queries: dict[str, str], qrels: list[tuple[str, str, int]], *, stem: str = "qs"
) -> tuple[Path, Path]:
    queries_path = tmp_path / f"{stem}-queries.jsonl"
    queries_path.write_text(
        "".join(json.dumps({"_id": qid, "text": text}) + "\n" for qid, text in queries.items())
    )
    qrels_path = tmp_path / f"{stem}-qrels.tsv"
    qrels_path.write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in qrels)
    )
    return queries_path, qrels_path


@pytest.fixture
def make_query_set(tmp_path):
    from embedhub.evaluation.services import query_set_create

    def make(*, owner, corpus, queries, qrels, name="test"):
        queries_path, qrels_path = write_beir(tmp_path, queries, qrels, stem=name)
        query_set, _ = query_set_create(
            owner=owner, corpus=corpus, name=name, queries_file=queries_path, qrels_file=qrels_path
        )
        return query_set

    return make


class NullContext:
    """A job context for services run in-process outside a job: progress goes nowhere."""

    checkpoint: dict = {}

    def progress(self, done, **kwargs) -> None:
        pass

    def check_cancel(self) -> None:
        pass


def build_index(*, owner, corpus, model_version, encoder: str = "fake:64", **options):
    """Create and fully build an index in-process (the embed job's own service)."""
    from embedhub.vectors.services import index_build, index_create

    index = index_create(
        owner=owner, corpus=corpus, model_version=model_version, encoder=encoder, **options
    )
    index_build(index=index, ctx=NullContext())
    index.refresh_from_db()
    return index


@pytest.fixture
def model_version(db):
    return ModelVersionFactory()


@pytest.fixture
def corpus(user):
    return CorpusFactory(owner=user, name="eval-corpus")


def query_set_upload(api, *, corpus, queries: bytes, qrels: bytes, skip_invalid: bool):
    """POST /query-sets/ as a client's multipart form would (q.jsonl and qr.tsv)."""
    body = {
        "corpus": corpus.pk,
        "name": "uploaded",
        "queries": SimpleUploadedFile("q.jsonl", queries),
        "qrels": SimpleUploadedFile("qr.tsv", qrels),
        "skip_invalid": "true" if skip_invalid else "false",
    }
    return api.post("/api/v1/query-sets/", body, format="multipart")
