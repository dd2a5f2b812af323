"""Lines Python's json reads but nothing after it can hold (nesting deeper than the stack
allows, lone surrogate escapes) are refused at parse time, naming file, line and field, and
are skipped and recorded under skip_invalid; CSV/TSV take what JSONL takes."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Document
from embedhub.corpora.parsing import MAX_JSON_DEPTH
from embedhub.evaluation.models import QuerySet
from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_execute
from tests.corpora.conftest import docs, write_jsonl

GOOD = {"_id": "ok", "text": "fine"}


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _deep_line(depth: int) -> str:
    # Built as text: json.dumps itself cannot write a value nested this deep.
    return '{"_id": "deep", "text": "t", "m": ' + _nested(depth) + "}"


def _fails(ingest, path: Path, **options) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        ingest(path, **options)
    assert not Document.objects.exists(), "a refused file imports nothing"
    return info.value


# (case, line 2 of the file, the field named, words of the problem)
UNSTORABLE = [
    ("nested past the limit", _deep_line(MAX_JSON_DEPTH), "m", "nested deeper than 100"),
    ("nested past the stack", _deep_line(5000), "json", "nested deeper than 100"),
    ("lone high surrogate", '{"_id": "s", "text": "a\\ud800b"}', "text", "lone surrogate"),
    ("lone low surrogate", '{"_id": "s", "text": "q \\udc00 zero"}', "text", "lone surrogate"),
    (
        "surrogate deep in metadata",
        '{"_id": "s", "text": "t", "metadata": {"k": ["x", {"y": "\\udfff"}]}}',
        "metadata",
        "lone surrogate",
    ),
    ("surrogate in a key", '{"_id": "s", "text": "t", "\\ud800": 1}', "json", "lone surrogate"),
    ("surrogate in the id", '{"_id": "\\ud800", "text": "t"}', "_id", "lone surrogate"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "line,field,problem", [c[1:] for c in UNSTORABLE], ids=[c[0] for c in UNSTORABLE]
)
def test_an_unstorable_jsonl_line_is_refused_naming_file_line_and_field(
    tmp_path, ingest, line, field, problem
):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, line])
    error = _fails(ingest, path)
    assert error.message.startswith(f"bad.jsonl line 2: {field}: ")
    assert problem in error.message and error.code == "invalid_file"
    assert (error.details["file"], error.details["line"], error.details["field"]) == (
        "bad.jsonl",
        2,
        field,
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "line,field,problem", [c[1:] for c in UNSTORABLE], ids=[c[0] for c in UNSTORABLE]
)
def test_skip_invalid_skips_an_unstorable_line_and_records_it(
    tmp_path, ingest, corpus, line, field, problem
):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, line, {"_id": "ok2", "text": "also"}])
    result = ingest(path, skip_invalid=True)
    [skipped] = result["skipped"]
    assert (skipped["file"], skipped["line"], skipped["field"]) == ("bad.jsonl", 2, field)
    assert problem in skipped["problem"] and result["skipped_total"] == 1
    assert sorted(docs(corpus)) == ["ok", "ok2"]


@pytest.mark.django_db
def test_a_surrogate_pair_escape_and_nesting_up_to_the_limit_are_imported(tmp_path, ingest, corpus):
    nested: object = "leaf"
    for _ in range(MAX_JSON_DEPTH - 1):  # the line's object is the 100th level
        nested = [nested]
    lines = [
        '{"_id": "pair", "text": "smile \\ud83d\\ude00", "tag": "\\u00e9"}',
        json.dumps({"_id": "deep", "text": "t", "m": nested}),
    ]
    path = write_jsonl(tmp_path / "ok.jsonl", lines)
    assert ingest(path)["inserted"] == 2
    rows = docs(corpus)
    assert rows["pair"].text == "smile \U0001f600" and rows["pair"].metadata == {"tag": "é"}
    assert rows["deep"].metadata["m"] == nested


@pytest.mark.django_db
@pytest.mark.parametrize(
    "member,line,expected",
    [
        ("corpus.jsonl", '{"_id": "d2", "text": "x\\ud800"}', "z.zip:corpus.jsonl line 2: text:"),
        ("queries.jsonl", _deep_line(5000), "z.zip:queries.jsonl line 2: json: nested deeper"),
    ],
    ids=["surrogate in the corpus", "deep line in the queries"],
)
def test_an_unstorable_line_in_a_beir_zip_names_the_member_and_line(
    tmp_path, ingest, corpus, member, line, expected
):
    members = {
        "corpus.jsonl": '{"_id": "d1", "text": "alpha"}\n',
        "queries.jsonl": '{"_id": "q1", "text": "which?"}\n',
        "qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\n",
    }
    members[member] += line + "\n"
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    assert expected in _fails(ingest, path).message
    assert not QuerySet.objects.exists()
    result = ingest(path, skip_invalid=True)
    assert [(s["file"], s["line"]) for s in result["skipped"]] == [(f"z.zip:{member}", 2)]
    assert result["query_sets"][0]["qrels"] == 1 and "d1" in docs(corpus)


@pytest.mark.django_db(transaction=True)
def test_an_ingest_job_with_a_surrogate_line_fails_naming_it_or_skips_it(api, user):
    # Through the API and the job runner, as a user meets it: the job's error names the line.
    content = b'{"_id": "s", "text": "a\\ud800b"}\n{"_id": "ok", "text": "fine"}\n'

    def run(skip_invalid: str) -> tuple[str, Job]:
        response = api.post(
            "/api/v1/corpora/upload/",
            {
                "file": SimpleUploadedFile("surrogate.jsonl", content),
                "name": f"sur-{skip_invalid}",
                "skip_invalid": skip_invalid,
            },
            format="multipart",
        )
        assert response.status_code == 202, response.content
        job_id = response.json()["id"]
        return job_execute(job_id=job_id, worker="test@inline"), Job.objects.get(pk=job_id)

    outcome, failed = run("false")
    assert outcome == "failed"
    assert failed.error.startswith("surrogate.jsonl line 1: text: holds a lone surrogate")
    outcome, skipped = run("true")
    assert outcome == "succeeded" and skipped.result["inserted"] == 1
    assert [(s["line"], s["field"]) for s in skipped.result["skipped"]] == [(1, "text")]


@pytest.mark.django_db
@pytest.mark.parametrize("fmt,sep", [("csv", ","), ("tsv", "\t")])
def test_a_csv_or_tsv_field_far_over_128_kib_is_imported_as_jsonl_would(
    tmp_path, ingest, corpus, fmt, sep
):
    text = "word " * 400_000  # 2 MB, where Python's csv stops at 131,072 characters
    path = tmp_path / f"big.{fmt}"
    path.write_text(f"id{sep}text\nbig{sep}{text}\nsmall{sep}short\n")
    assert ingest(path)["inserted"] == 2
    assert docs(corpus)["big"].text == text


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header,column,positions",
    [("_id,text,text", "text", (2, 3)), ("id,text,lang,lang", "lang", (3, 4))],
)
def test_a_duplicated_csv_column_is_refused_naming_file_line_1_and_the_column(
    tmp_path, ingest, header, column, positions
):
    path = tmp_path / "dup.csv"
    row = ",".join(f"v{i}" for i in range(header.count(",") + 1))
    path.write_text(f"{header}\n{row}\n")
    for skip in (False, True):  # the header is the whole file's: nothing to skip
        error = _fails(ingest, path, skip_invalid=skip)
        assert error.message.startswith(
            f"dup.csv: line 1: column {column!r} appears twice in the header "
            f"(columns {positions[0]} and {positions[1]})"
        )
        assert error.details == {"file": "dup.csv", "line": 1, "field": column}
