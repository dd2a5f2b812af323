"""A query-set upload where skip_invalid skips every line, or where nothing usable is left
once the bad judgements are dropped, is refused naming the file and why: no empty query
set is stored, and one it would have replaced keeps its queries and judgements. In a BEIR
zip the ingest job fails the same way."""

from __future__ import annotations

import zipfile

import pytest

from embedhub.core.errors import ApplicationError
from embedhub.corpora.services import corpus_ingest_file
from embedhub.evaluation.models import Query, QuerySet
from tests.evaluation.conftest import add_documents, query_set_upload
from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db

QUERIES = b'{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n'
HEADER = b"query-id\tcorpus-id\tscore\n"
QRELS = HEADER + b"q1\td1\t1\nq2\td2\t1\n"


@pytest.fixture
def corpus(user):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one", "d2": "two"})
    return corpus


def _refused(api, corpus, *, queries: bytes = QUERIES, qrels: bytes = QRELS) -> dict:
    response = query_set_upload(api, corpus=corpus, queries=queries, qrels=qrels, skip_invalid=True)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_file"
    return error


@pytest.mark.parametrize(
    "qrels,first",
    [
        (HEADER + b"q1\td1\tinf\nq2\td2\t0.5\n", "line 2: score: 'inf' is not an integer"),
        (HEADER + b"q1\td8\t1\nq2\td9\t1\n", "line 2: corpus-id: document 'd8' is not in"),
        (HEADER + b"q7\td1\t1\nq8\td2\t1\n", "line 2: query-id: query 'q7' is not in q.jsonl"),
    ],
    ids=["bad scores", "unknown documents", "unknown queries"],
)
def test_a_query_set_upload_whose_judgements_are_all_skipped_is_a_400_naming_the_qrels_file(
    api, corpus, qrels, first
):
    error = _refused(api, corpus, qrels=qrels)
    assert error["message"].startswith(
        "qr.tsv: nothing usable is left: all its judgements were skipped"
    )
    assert first in error["message"] and error["details"]["file"] == "qr.tsv"
    assert error["details"]["skipped_total"] == 2
    assert not QuerySet.objects.exists()


def test_a_query_set_upload_whose_queries_are_all_skipped_is_a_400_naming_the_queries_file(
    api, corpus
):
    error = _refused(api, corpus, queries=b'{"_id": "q1"}\nnot json\n')
    assert error["message"].startswith(
        "q.jsonl: nothing usable is left: all its queries were skipped"
    )
    assert "line 1: text: " in error["message"] and error["details"]["file"] == "q.jsonl"
    assert not QuerySet.objects.exists()


def test_an_empty_qrels_file_is_named_as_empty_even_when_queries_were_skipped(api, corpus):
    error = _refused(api, corpus, queries=QUERIES + b"not json\n", qrels=HEADER)
    assert error["message"] == "qr.tsv: the file holds no judgements"
    assert not QuerySet.objects.exists()


def test_an_unusable_upload_leaves_the_query_set_it_would_replace_as_it_was(api, corpus):
    response = query_set_upload(api, corpus=corpus, queries=QUERIES, qrels=QRELS, skip_invalid=True)
    assert response.status_code == 201, response.content
    _refused(api, corpus, qrels=HEADER + b"q1\td9\t1\n")
    query_set = QuerySet.objects.get()
    assert (query_set.queries.count(), query_set.qrels.count()) == (2, 2)


def test_a_beir_zip_whose_judgements_are_all_skipped_fails_and_stores_no_query_set(
    tmp_path, corpus
):
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("corpus.jsonl", '{"_id": "d3", "text": "three"}\n')
        zf.writestr("queries.jsonl", QUERIES)
        zf.writestr("qrels/test.tsv", HEADER + b"q1\td9\t1\n")
    with pytest.raises(ApplicationError) as info:
        corpus_ingest_file(corpus_id=corpus.pk, path=path, fmt="zip", skip_invalid=True)
    assert info.value.message.startswith("z.zip:qrels/test.tsv: nothing usable is left")
    assert not QuerySet.objects.exists() and not Query.objects.exists()
    assert not corpus.documents.filter(external_id="d3").exists()
