"""Bad input fails naming file, line and field, importing nothing; skip_invalid lists exactly
what it skipped."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Document
from embedhub.evaluation.models import Qrel, Query, QuerySet
from tests.corpora.conftest import write_jsonl

pytestmark = pytest.mark.django_db

GOOD = {"_id": "ok1", "title": "t", "text": "fine"}
GOOD2 = {"_id": "ok2", "text": "also fine"}


def _fails(ingest, path: Path, **options) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        ingest(path, **options)
    assert Document.objects.count() == 0, "a failed ingest must leave nothing behind"
    return info.value


def _jsonl_bytes(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# (name, lines, expected line, expected field, words in the problem)
JSONL_CASES = [
    ("malformed json", [json.dumps(GOOD), '{"_id": "x", "text": '], 2, "json", "malformed JSON"),
    ("missing id", [json.dumps(GOOD), '{"text": "no id"}'], 2, "_id/id", "missing"),
    ("missing text", [json.dumps(GOOD), '{"_id": "x", "title": "t"}'], 2, "text", "missing"),
    ("empty text", [json.dumps(GOOD), '{"_id": "x", "text": ""}'], 2, "text", "empty"),
    ("blank text", [json.dumps(GOOD), '{"_id": "x", "text": "   "}'], 2, "text", "blank"),
    ("not an object", [json.dumps(GOOD), "[1, 2]"], 2, "json", "found a list"),
    (
        "text not a string",
        [json.dumps(GOOD), '{"_id": "x", "text": 5}'],
        2,
        "text",
        "must be a string",
    ),
    ("nul character", [json.dumps(GOOD), '{"_id": "x", "text": "a\\u0000b"}'], 2, "text", "NUL"),
    (
        "id too long",
        [json.dumps(GOOD), json.dumps({"_id": "x" * 600, "text": "t"})],
        2,
        "_id/id",
        "longer than 512",
    ),
]


@pytest.mark.parametrize(
    "lines,line,field,problem", [c[1:] for c in JSONL_CASES], ids=[c[0] for c in JSONL_CASES]
)
def test_bad_jsonl_line_fails_naming_file_line_and_field(
    tmp_path, ingest, lines, line, field, problem
):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([*lines, json.dumps(GOOD2)]) + "\n")
    error = _fails(ingest, path)
    assert f"bad.jsonl line {line}: {field}:" in error.message
    assert problem in error.message
    assert error.details == {
        "file": "bad.jsonl",
        "line": line,
        "field": field,
        "problem": error.details["problem"],
    }


@pytest.mark.parametrize(
    "lines,line,field,problem", [c[1:] for c in JSONL_CASES], ids=[c[0] for c in JSONL_CASES]
)
def test_skip_invalid_skips_exactly_the_bad_line(
    tmp_path, ingest, corpus, lines, line, field, problem
):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([*lines, json.dumps(GOOD2)]) + "\n")
    result = ingest(path, skip_invalid=True)
    assert result["skipped_total"] == 1
    [entry] = result["skipped"]
    assert (entry["file"], entry["line"], entry["field"]) == ("bad.jsonl", line, field)
    assert problem in entry["problem"]
    assert sorted(corpus.documents.values_list("external_id", flat=True)) == ["ok1", "ok2"]


def test_not_utf8_names_the_line(tmp_path, ingest, corpus):
    path = _jsonl_bytes(
        tmp_path / "latin1.jsonl", [json.dumps(GOOD).encode(), b'{"_id": "x", "text": "caf\xe9"}']
    )
    error = _fails(ingest, path)
    assert "latin1.jsonl line 2: encoding: not valid UTF-8" in error.message
    result = ingest(path, skip_invalid=True)
    assert [(s["line"], s["field"]) for s in result["skipped"]] == [(2, "encoding")]


def test_utf16_file_fails_on_line_one(tmp_path, ingest):
    path = tmp_path / "utf16.jsonl"
    path.write_bytes(json.dumps(GOOD).encode("utf-16"))
    assert "utf16.jsonl line 1: encoding" in _fails(ingest, path).message


def test_duplicate_ids_report_both_lines(tmp_path, ingest, corpus):
    path = write_jsonl(
        tmp_path / "dup.jsonl",
        [GOOD, GOOD2, {"_id": "ok1", "text": "again"}, {"_id": "ok2", "text": "and again"}],
    )
    error = _fails(ingest, path)
    assert "dup.jsonl line 3: _id/id: duplicate id 'ok1': lines 1 and 3" in error.message
    result = ingest(path, skip_invalid=True)
    assert [(s["line"], s["problem"]) for s in result["skipped"]] == [
        (3, "duplicate id 'ok1' (first on line 1, which was kept)"),
        (4, "duplicate id 'ok2' (first on line 2, which was kept)"),
    ]
    assert result["skipped_total"] == 2 and result["inserted"] == 2
    assert corpus.documents.get(external_id="ok1").text == "fine"


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["zero bytes", "blank lines"])
def test_empty_file_fails(tmp_path, ingest, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    assert _fails(ingest, path).message.startswith("empty.jsonl: ")


def test_csv_mapping_naming_a_missing_column_fails_on_line_one(tmp_path, ingest):
    path = tmp_path / "docs.csv"
    path.write_text("id,body\n1,text\n")
    error = _fails(ingest, path, mapping={"text": "content"})
    assert "docs.csv: line 1: the mapping names column 'content' for field 'text'" in error.message
    assert "'id', 'body'" in error.message
    # Without a mapping, the missing default column is named too; skip_invalid cannot help.
    assert "no column for field 'text'" in _fails(ingest, path, skip_invalid=True).message


def test_csv_bad_rows_name_the_line_and_can_be_skipped(tmp_path, ingest, corpus):
    path = tmp_path / "docs.csv"
    path.write_bytes(b'id,text\n1,one\n2\n3,\n4,"quoted\nacross lines"\n5,caf\xe9\n6,six\n')
    error = _fails(ingest, path)
    assert "docs.csv line 3: columns: expected 2 columns as in the header, found 1" in error.message
    result = ingest(path, skip_invalid=True)
    assert [(s["line"], s["field"]) for s in result["skipped"]] == [
        (3, "columns"),
        (4, "text"),
        (7, "encoding"),
    ]
    assert sorted(corpus.documents.values_list("external_id", flat=True)) == ["1", "4", "6"]
    assert corpus.documents.get(external_id="4").text == "quoted\nacross lines"


def test_skipped_list_is_capped_but_the_total_is_exact(tmp_path, ingest, corpus):
    lines = [json.dumps(GOOD)] + ['{"_id": "x"'] * 1500
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = ingest(path, skip_invalid=True)
    assert result["skipped_total"] == 1500 and len(result["skipped"]) == 1000
    assert result["skipped"][0]["line"] == 2 and result["skipped"][-1]["line"] == 1001


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "member,why",
    [
        ("../corpus.jsonl", "path traversal"),
        ("a/../../x.jsonl", "path traversal"),
        ("/etc/corpus.jsonl", "absolute path"),
    ],
)
def test_zip_with_unsafe_paths_is_refused(tmp_path, ingest, member, why):
    path = _zip(
        tmp_path / "evil.zip", {"corpus.jsonl": b'{"_id": "a", "text": "x"}\n', member: b"x"}
    )
    error = _fails(ingest, path)
    assert error.message.startswith("evil.zip: unsafe member") and why in error.message


def test_zip_bomb_ratio_is_refused(tmp_path, ingest):
    path = _zip(tmp_path / "bomb.zip", {"corpus.jsonl": b"a" * (4 * 1024 * 1024)})
    error = _fails(ingest, path)
    assert "bomb.zip" in error.message and "zip bomb" in error.message


def test_zip_total_uncompressed_size_is_limited(tmp_path, ingest, settings):
    settings.EMBEDHUB_ZIP_MAX_UNCOMPRESSED_BYTES = 100
    path = _zip(tmp_path / "big.zip", {"corpus.jsonl": json.dumps(GOOD).encode() * 10})
    assert "over the 100-byte limit" in _fails(ingest, path).message


def test_zip_without_corpus_or_not_a_zip(tmp_path, ingest):
    assert (
        "no corpus.jsonl" in _fails(ingest, _zip(tmp_path / "x.zip", {"docs.jsonl": b"{}"})).message
    )
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    assert "not a readable zip" in _fails(ingest, fake).message


def test_bad_line_inside_a_zip_names_the_member(tmp_path, ingest):
    path = _zip(
        tmp_path / "b.zip", {"top/corpus.jsonl": b'{"_id": "a", "text": "x"}\n{"_id": "b"}\n'}
    )
    assert "b.zip:top/corpus.jsonl line 2: text: is missing" in _fails(ingest, path).message


def test_bad_qrels_in_a_zip_roll_back_the_corpus_too(tmp_path, ingest):
    path = _zip(
        tmp_path / "q.zip",
        {
            "corpus.jsonl": b'{"_id": "d1", "text": "x"}\n',
            "queries.jsonl": b'{"_id": "q1", "text": "y"}\n',
            "qrels/test.tsv": b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tmissing-doc\t1\nq9\td1\t1\n",
        },
    )
    error = _fails(ingest, path)
    assert (
        "q.zip:qrels/test.tsv line 3: corpus-id: document 'missing-doc' is not in the corpus"
        in error.message
    )
    assert (
        not QuerySet.objects.exists() and not Query.objects.exists() and not Qrel.objects.exists()
    )


@pytest.mark.django_db(transaction=True)
def test_failure_after_many_good_lines_leaves_nothing_on_the_real_connection(tmp_path, ingest):
    # transaction=True: the ingest runs on its own connection and commits for real, as in a worker.
    lines = [json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) for i in range(5000)] + ["{broken"]
    path = tmp_path / "late.jsonl"
    path.write_text("\n".join(lines) + "\n")
    error = _fails(ingest, path)
    assert "late.jsonl line 5001: json" in error.message
    result = ingest(path, skip_invalid=True)
    assert result["inserted"] == 5000 and Document.objects.count() == 5000
