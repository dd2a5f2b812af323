"""query_set_import on its own: paths or file objects, streamed, checked with line numbers."""

from __future__ import annotations

import io

import pytest

from embedhub.core.errors import ApplicationError
from embedhub.evaluation.importing import query_set_import
from embedhub.evaluation.models import QuerySet
from tests.factories import DocumentFactory

pytestmark = pytest.mark.django_db

QUERIES = (
    b'{"_id": "q1", "text": "first?", "metadata": {"k": 1}}\n{"_id": "q2", "text": "second?"}\n'
)
QRELS = b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\n"


@pytest.fixture
def judged_corpus(corpus):
    DocumentFactory(corpus=corpus, external_id="d1")
    DocumentFactory(corpus=corpus, external_id="d2")
    return corpus


def test_imports_from_paths(tmp_path, judged_corpus, user):
    (tmp_path / "queries.jsonl").write_bytes(QUERIES)
    (tmp_path / "test.tsv").write_bytes(QRELS)
    result = query_set_import(
        owner=user,
        corpus=judged_corpus,
        name="test",
        queries_path=tmp_path / "queries.jsonl",
        qrels_path=str(tmp_path / "test.tsv"),
    )
    assert (result["queries"], result["qrels"], result["skipped_total"]) == (2, 2, 0)
    query_set = QuerySet.objects.get(pk=result["query_set_id"])
    assert query_set.owner == user and query_set.name == "test"
    assert query_set.queries.get(external_id="q1").metadata == {"k": 1}
    assert query_set.qrels.get(query_external_id="q2").relevance == 0


def test_imports_from_file_objects_and_trec_format(judged_corpus, user):
    result = query_set_import(
        owner=user,
        corpus=judged_corpus,
        name="dev",
        queries_path=io.BytesIO(QUERIES),
        qrels_path=io.BytesIO(b"q1 0 d1 2\nq1 0 d2 1\n"),
    )
    # q2 has no judgement, so it cannot be scored and is left out.
    assert (result["queries"], result["qrels"]) == (1, 2)


@pytest.mark.parametrize(
    "queries,qrels,expected",
    [
        (
            QUERIES + b'{"_id": "q1", "text": "again"}\n',
            QRELS,
            "queries.jsonl line 3: _id/id: duplicate query id 'q1'",
        ),
        (QUERIES + b'{"_id": "q3"}\n', QRELS, "queries.jsonl line 3: text: is missing"),
        (
            QUERIES,
            QRELS + b"q9\td1\t1\n",
            "qrels.tsv line 4: query-id: query 'q9' is not in queries.jsonl",
        ),
        (
            QUERIES,
            QRELS + b"q1\tdX\t1\n",
            "qrels.tsv line 4: corpus-id: document 'dX' is not in the corpus",
        ),
        (QUERIES, QRELS + b"q1\td2\tmany\n", "qrels.tsv line 4: score: 'many' is not an integer"),
        (
            QUERIES,
            QRELS + b"q1\td1\t1\n",
            "qrels.tsv line 4: corpus-id: duplicate judgement for query 'q1' and document 'd1'",
        ),
        (QUERIES, QRELS + b"q1 d1\n", "qrels.tsv line 4: columns: expected 3 columns"),
        (b"", QRELS, "queries.jsonl: the file holds no queries"),
    ],
)
def test_bad_lines_fail_with_file_and_line_and_import_nothing(
    judged_corpus, user, queries, qrels, expected
):
    with pytest.raises(ApplicationError) as info:
        query_set_import(
            owner=user,
            corpus=judged_corpus,
            name="test",
            queries_path=io.BytesIO(queries),
            qrels_path=io.BytesIO(qrels),
            queries_label="queries.jsonl",
            qrels_label="qrels.tsv",
        )
    assert expected in info.value.message
    assert not QuerySet.objects.exists()


def test_skip_invalid_drops_bad_judgements_and_lists_them(judged_corpus, user):
    qrels = QRELS + b"q9\td1\t1\nq1\tdX\t1\n"
    result = query_set_import(
        owner=user,
        corpus=judged_corpus,
        name="test",
        queries_path=io.BytesIO(QUERIES),
        qrels_path=io.BytesIO(qrels),
        skip_invalid=True,
        qrels_label="qrels.tsv",
    )
    assert result["qrels"] == 2 and result["skipped_total"] == 2
    assert sorted((s["line"], s["field"]) for s in result["skipped"]) == [
        (4, "query-id"),
        (5, "corpus-id"),
    ]
