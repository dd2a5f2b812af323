"""Qrels scores are integers that fit the relevance column: anything else is refused naming
file, line and field (or skipped and recorded), never truncated, never a 500; and only a
line that looks like BEIR's header is taken for one."""

from __future__ import annotations

import io
import zipfile

import pytest

from embedhub.core.errors import ApplicationError
from embedhub.corpora.services import corpus_ingest_file
from embedhub.evaluation.importing import query_set_import
from embedhub.evaluation.models import Qrel, QuerySet
from tests.evaluation.conftest import add_documents, query_set_upload
from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db

QUERIES = b'{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n'
HEADER = b"query-id\tcorpus-id\tscore\n"


@pytest.fixture
def corpus(user):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one", "d2": "two"})
    return corpus


def _import(user, corpus, qrels: bytes, **options) -> dict:
    return query_set_import(
        owner=user,
        corpus=corpus,
        name="test",
        queries_path=io.BytesIO(QUERIES),
        qrels_path=io.BytesIO(qrels),
        queries_label="queries.jsonl",
        qrels_label="qrels.tsv",
        **options,
    )


def _refused(user, corpus, qrels: bytes) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        _import(user, corpus, qrels)
    assert not QuerySet.objects.exists() and not Qrel.objects.exists()
    return info.value


NOT_INTEGERS = ["inf", "-inf", "Infinity", "nan", "0.5", "1.5", "0.9", "-0.5", "1e-3", "²", "one"]
OUT_OF_RANGE = ["1e20", "100000000000000000000", "2147483648", "-2147483649", "1e999999999"]


@pytest.mark.parametrize("score", NOT_INTEGERS)
def test_a_qrels_score_that_is_not_an_integer_is_refused_naming_file_line_and_field(
    user, corpus, score
):
    error = _refused(user, corpus, HEADER + f"q1\td1\t1\nq2\td2\t{score}\n".encode())
    assert error.message.startswith(f"qrels.tsv line 3: score: {score!r} is not an integer")
    assert error.code == "invalid_file"
    assert (error.details["file"], error.details["line"], error.details["field"]) == (
        "qrels.tsv",
        3,
        "score",
    )


@pytest.mark.parametrize("score", OUT_OF_RANGE)
def test_a_qrels_score_too_large_for_the_column_is_refused_naming_file_line_and_field(
    user, corpus, score
):
    error = _refused(user, corpus, HEADER + f"q1\td1\t{score}\n".encode())
    assert error.message.startswith(f"qrels.tsv line 2: score: {score!r} is out of range")
    assert "-2147483648 to 2147483647" in error.message


@pytest.mark.parametrize("score", ["inf", "0.5", "1e20"])
def test_skip_invalid_skips_a_bad_score_and_records_it(user, corpus, score):
    result = _import(
        user, corpus, HEADER + f"q1\td1\t1\nq2\td2\t{score}\n".encode(), skip_invalid=True
    )
    assert result["qrels"] == 1 and result["skipped_total"] == 1
    [skipped] = result["skipped"]
    assert (skipped["file"], skipped["line"], skipped["field"]) == ("qrels.tsv", 3, "score")


def test_whole_number_scores_are_kept_exactly(user, corpus):
    qrels = HEADER + b"q1\td1\t2.0\nq1\td2\t-1\nq2\td1\t+3\nq2\td2\t2147483647\n"
    assert _import(user, corpus, qrels)["qrels"] == 4
    stored = {
        (q.query_external_id, q.document_external_id): q.relevance for q in Qrel.objects.all()
    }
    assert stored == {("q1", "d1"): 2, ("q1", "d2"): -1, ("q2", "d1"): 3, ("q2", "d2"): 2147483647}


@pytest.mark.parametrize(
    "header",
    [
        b"query-id\tcorpus-id\tscore\n",
        b"Query-ID\tCorpus-ID\tSCORE\n",
        b"query_id corpus_id score\n",
    ],
)
def test_a_first_line_naming_the_beir_columns_is_a_header(user, corpus, header):
    result = _import(user, corpus, header + b"q1\td1\t1\n")
    assert (result["qrels"], result["skipped_total"]) == (1, 0)


@pytest.mark.parametrize(
    "first,field",
    [(b"q1\td1\tone\n", "score"), (b"qid\tdocid\trel\n", "score"), (b"q1\td1\t0.5\n", "score")],
)
def test_a_malformed_first_line_is_an_error_not_a_silently_dropped_header(
    user, corpus, first, field
):
    error = _refused(user, corpus, first + b"q2\td2\t1\n")
    assert error.message.startswith(f"qrels.tsv line 1: {field}: ")
    result = _import(user, corpus, first + b"q2\td2\t1\n", skip_invalid=True)
    assert [(s["line"], s["field"]) for s in result["skipped"]] == [(1, field)]
    assert result["qrels"] == 1


@pytest.mark.parametrize("score", ["inf", "1e20", "0.5"])
def test_a_query_set_upload_with_a_bad_score_is_a_400_naming_file_line_and_field(
    api, corpus, score
):
    def upload(skip_invalid: bool):
        qrels = HEADER + f"q1\td1\t1\nq2\td2\t{score}\n".encode()
        return query_set_upload(
            api, corpus=corpus, queries=QUERIES, qrels=qrels, skip_invalid=skip_invalid
        )

    response = upload(False)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_file"
    assert error["message"].startswith(f"qr.tsv line 3: score: {score!r}")
    assert not QuerySet.objects.exists()
    response = upload(True)
    assert response.status_code == 201, response.content
    assert response.json()["qrel_count"] == 1
    assert [(s["line"], s["field"]) for s in response.json()["skipped"]] == [(3, "score")]


def test_a_bad_score_in_a_beir_zip_names_the_member_and_line_and_is_skippable(
    tmp_path, user, corpus
):
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("corpus.jsonl", '{"_id": "d3", "text": "three"}\n')
        zf.writestr("queries.jsonl", QUERIES)
        zf.writestr("qrels/test.tsv", HEADER + b"q1\td3\t1\nq2\td3\tinf\nq2\td1\t1.5\n")

    def ingest(**options) -> dict:
        return corpus_ingest_file(corpus_id=corpus.pk, path=path, fmt="zip", **options)

    with pytest.raises(ApplicationError) as info:
        ingest()
    assert info.value.message.startswith("z.zip:qrels/test.tsv line 3: score: 'inf' is not")
    assert not corpus.documents.filter(external_id="d3").exists()
    result = ingest(skip_invalid=True)
    assert [(s["line"], s["field"]) for s in result["skipped"]] == [(3, "score"), (4, "score")]
    assert result["query_sets"][0]["qrels"] == 1
    assert list(Qrel.objects.values_list("relevance", flat=True)) == [1]
