"""A query-set upload whose queries file has a line nested deeper than the limit or a lone
surrogate escape is a 400 naming file, line and field (skipped and recorded with
skip_invalid), never a 500."""

from __future__ import annotations

import pytest

from embedhub.evaluation.models import QuerySet
from tests.evaluation.conftest import add_documents, query_set_upload
from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db

GOOD = b'{"_id": "q1", "text": "q one"}\n'
QRELS = b"query-id\tcorpus-id\tscore\nq1\td1\t1\n"
DEEP = b'{"_id": "0", "text": "x", "m": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
SURROGATE = b'{"_id": "0", "text": "q \\udc00 zero"}\n'


@pytest.mark.parametrize(
    "line,field,problem",
    [(DEEP, "json", "nested deeper than 100 levels"), (SURROGATE, "text", "lone surrogate")],
    ids=["deeply nested", "lone surrogate"],
)
def test_an_unstorable_queries_line_is_a_400_naming_file_line_and_field_or_is_skipped(
    api, user, line, field, problem
):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, {"d1": "one"})

    def upload(skip_invalid: bool):
        return query_set_upload(
            api, corpus=corpus, queries=GOOD + line, qrels=QRELS, skip_invalid=skip_invalid
        )

    response = upload(False)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["message"].startswith(f"q.jsonl line 2: {field}: ") and problem in error["message"]
    assert error["details"]["line"] == 2 and not QuerySet.objects.exists()
    response = upload(True)
    assert response.status_code == 201, response.content
    assert [(s["line"], s["field"]) for s in response.json()["skipped"]] == [(2, field)]
    assert response.json()["query_count"] == 1
