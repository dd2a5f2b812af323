"""A training-set line that could not be trained on later (a lone surrogate, nesting deeper
than the limit) is refused at upload with a 400 naming file, line and field; nothing is kept."""

from __future__ import annotations

import pytest

from embedhub.registry.training_sets import training_dir
from tests.registry.conftest import training_set_upload

pytestmark = pytest.mark.django_db

GOOD = b'{"query": "a", "positive": "b"}\n'


@pytest.mark.parametrize(
    "line,field,problem",
    [
        (b'{"query": "a\\ud800", "positive": "b"}', "query", "lone surrogate"),
        (b'{"query": "a", "positive": "b", "negatives": ["\\udfff"]}', "negatives", "surrogate"),
        (
            b'{"query": "a", "positive": "b", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "json",
            "nested deeper than 100 levels",
        ),
        (
            b'{"query": "a", "positive": "b", "x": ' + b"[" * 150 + b"]" * 150 + b"}",
            "x",
            "nested deeper than 100 levels",
        ),
    ],
    ids=["surrogate in the query", "surrogate in a negative", "past the stack", "past the limit"],
)
def test_an_unusable_training_set_line_is_a_400_naming_file_line_and_field(
    api, user, line, field, problem
):
    response = training_set_upload(api, GOOD + line + b"\n")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_file"
    assert error["message"].startswith(f"pairs.jsonl line 2: {field}: ")
    assert problem in error["message"]
    assert (error["details"]["line"], error["details"]["field"]) == (2, field)
    folder = training_dir(user=user)
    assert not folder.exists() or not any(folder.iterdir())
