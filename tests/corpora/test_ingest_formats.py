"""Every supported upload format lands as the same Document rows."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from embedhub.evaluation.models import QuerySet
from tests.corpora.conftest import docs, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


def sha(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()


def test_beir_jsonl_keeps_id_title_text_metadata_and_hashes_title_and_text(
    tmp_path, ingest, corpus
):
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Cells", "text": "Cells divide.", "metadata": {"year": 2001}},
            {"_id": "d2", "title": "", "text": "Proteins fold.", "metadata": {}},
        ],
    )
    result = ingest(path)
    assert result["inserted"] == 2 and result["skipped"] == [] and result["skipped_total"] == 0
    rows = docs(corpus)
    assert rows["d1"].title == "Cells" and rows["d1"].text == "Cells divide."
    assert rows["d1"].metadata == {"year": 2001}
    assert rows["d1"].content_hash == sha("Cells", "Cells divide.")
    assert rows["d2"].content_hash == sha("", "Proteins fold.")
    # File order is kept, so document ids follow the file.
    assert list(corpus.documents.values_list("external_id", flat=True)) == ["d1", "d2"]


def test_generic_jsonl_numeric_ids_and_extra_keys_go_to_metadata(tmp_path, ingest, corpus):
    path = write_jsonl(
        tmp_path / "docs.json",
        [{"id": 7, "text": "seven", "lang": "en", "tags": ["a"]}, "", {"id": "8", "text": "eight"}],
    )
    result = ingest(path)
    assert result["format"] == "jsonl" and result["inserted"] == 2
    rows = docs(corpus)
    assert rows["7"].metadata == {"lang": "en", "tags": ["a"]}
    assert rows["7"].title == "" and rows["8"].text == "eight"


def test_jsonl_with_utf8_bom_and_crlf_line_ends(tmp_path, ingest, corpus):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"_id": "a", "text": "\xc3\xa9t\xc3\xa9"}\r\n{"_id": "b", "text": "x"}\r\n'
    )
    assert ingest(path)["inserted"] == 2
    assert docs(corpus)["a"].text == "été"


def test_csv_default_columns_and_other_columns_as_metadata(tmp_path, ingest, corpus):
    path = tmp_path / "docs.csv"
    path.write_text(
        '_id,title,text,source\n1,One,"first, with comma",web\n2,Two,"multi\nline text",book\n'
    )
    result = ingest(path)
    assert result["inserted"] == 2
    rows = docs(corpus)
    assert rows["1"].text == "first, with comma" and rows["1"].metadata == {"source": "web"}
    assert rows["2"].text == "multi\nline text" and rows["2"].title == "Two"


def test_csv_with_mapping_renames_columns_and_picks_metadata(tmp_path, ingest, corpus):
    path = tmp_path / "docs.csv"
    path.write_text("doc,heading,body,author,ignored\nx1,H,Body one,Ann,zz\n")
    mapping = {"id": "doc", "title": "heading", "text": "body", "writer": "author"}
    assert ingest(path, mapping=mapping)["inserted"] == 1
    row = docs(corpus)["x1"]
    assert (row.title, row.text, row.metadata) == ("H", "Body one", {"writer": "Ann"})


def test_tsv_uses_tabs(tmp_path, ingest, corpus):
    path = tmp_path / "docs.tsv"
    path.write_text("id\ttext\nt1\tcomma, inside\nt2\tsecond\n")
    assert ingest(path)["inserted"] == 2
    assert docs(corpus)["t1"].text == "comma, inside"


def _beir_zip(path: Path, *, top: str = "", qrels: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(
            f"{top}corpus.jsonl",
            '{"_id": "d1", "title": "A", "text": "alpha"}\n'
            '{"_id": "d2", "title": "B", "text": "beta"}\n'
            '{"_id": "d3", "title": "C", "text": "gamma"}\n',
        )
        zf.writestr(
            f"{top}queries.jsonl",
            '{"_id": "q1", "text": "what is alpha", "metadata": {}}\n'
            '{"_id": "q2", "text": "what is beta"}\n'
            '{"_id": "q3", "text": "never judged"}\n',
        )
        for split, body in (
            qrels or {"test": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n"}
        ).items():
            zf.writestr(f"{top}qrels/{split}.tsv", body)
    return path


@pytest.mark.parametrize("top", ["", "mini/"])
def test_beir_zip_imports_corpus_and_a_query_set_named_after_the_qrels(
    tmp_path, ingest, corpus, top
):
    result = ingest(_beir_zip(tmp_path / "beir.zip", top=top))
    assert result["inserted"] == 3
    [imported] = result["query_sets"]
    assert imported["name"] == "test" and imported["queries"] == 2 and imported["qrels"] == 2
    query_set = QuerySet.objects.get(pk=imported["query_set_id"])
    assert query_set.corpus == corpus and query_set.owner == corpus.owner
    assert sorted(query_set.queries.values_list("external_id", "text")) == [
        ("q1", "what is alpha"),
        ("q2", "what is beta"),
    ]
    assert sorted(
        query_set.qrels.values_list("query_external_id", "document_external_id", "relevance")
    ) == [
        ("q1", "d1", 1),
        ("q2", "d2", 2),
    ]


def test_beir_zip_with_several_splits_makes_one_query_set_each(tmp_path, ingest, corpus):
    splits = {"train": "q1\td1\t1\n", "dev": "q2 0 d2 1\n", "test": "q3\td3\t1\n"}
    result = ingest(_beir_zip(tmp_path / "beir.zip", qrels=splits))
    assert sorted(s["name"] for s in result["query_sets"]) == ["dev", "test", "train"]
    assert QuerySet.objects.get(corpus=corpus, name="dev").qrels.get().document_external_id == "d2"


def test_reimporting_a_zip_replaces_the_query_set_instead_of_duplicating_it(
    tmp_path, ingest, corpus
):
    ingest(_beir_zip(tmp_path / "one.zip"))
    ingest(_beir_zip(tmp_path / "two.zip", qrels={"test": "q1\td3\t1\n"}))
    query_set = QuerySet.objects.get(corpus=corpus, name="test")
    assert list(query_set.qrels.values_list("query_external_id", "document_external_id")) == [
        ("q1", "d3")
    ]
    assert list(query_set.queries.values_list("external_id", flat=True)) == ["q1"]


def test_shipped_scifact_mini_sample_imports_completely(tmp_path, ingest, corpus):
    sample = ROOT / "samples" / "scifact-mini"
    path = tmp_path / "scifact-mini.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sample.rglob("*"):
            if file.is_file():
                zf.write(file, f"scifact-mini/{file.relative_to(sample)}")
    result = ingest(path)
    assert result["inserted"] == 300 and result["skipped_total"] == 0
    [imported] = result["query_sets"]
    assert imported["queries"] == 30 and imported["qrels"] >= 30
