"""A file whose every line is invalid, uploaded with skip_invalid, is refused like a query
set with nothing usable left: the ingest fails naming the file and its first bad line, so
an upload into a new name leaves no empty corpus, and an existing corpus is kept."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Corpus
from embedhub.jobs.models import Job
from tests.corpora.conftest import run_inline, upload_accepted
from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db(transaction=True)

ALL_BAD = b'{"_id": "d1"}\nnot json\n[1, 2]\n'
NOTHING_USABLE = (
    "docs.jsonl: nothing usable is left: all its documents were skipped "
    "(the first: line 1: text: is missing)"
)


def _upload(api, *, content: bytes = ALL_BAD, **fields) -> Job:
    return upload_accepted(api, content=content, skip_invalid="true", **fields)


def test_an_upload_into_a_new_name_whose_lines_were_all_skipped_leaves_no_corpus(api, user):
    job = run_inline(_upload(api, name="fresh"))

    assert job.status == Job.Status.FAILED and job.corpus_id is None
    assert job.error.startswith(NOTHING_USABLE), job.error
    assert "the corpus 'fresh' that this upload created was removed" in job.error
    assert not Corpus.objects.filter(owner=user, name="fresh").exists()


def test_an_existing_corpus_refuses_such_a_file_and_is_kept(api, user):
    corpus = CorpusFactory(owner=user, name="mine")
    job = run_inline(_upload(api, corpus=corpus.pk))
    assert job.status == Job.Status.FAILED and job.corpus_id == corpus.pk
    assert job.error.startswith(NOTHING_USABLE) and "removed" not in job.error
    assert Corpus.objects.filter(pk=corpus.pk).exists() and not corpus.documents.exists()


def test_one_usable_line_is_imported_and_the_rest_skipped(api, user):
    job = run_inline(
        _upload(api, content=ALL_BAD + b'{"_id": "d2", "text": "fine"}\n', name="kept")
    )
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["inserted"] == 1 and job.result["skipped_total"] == 3
    assert Corpus.objects.get(owner=user, name="kept").documents.count() == 1


def test_a_csv_whose_rows_were_all_skipped_is_refused_with_every_skip_listed(tmp_path, ingest):
    path = tmp_path / "rows.csv"
    path.write_text("id,text\n1,\n,orphan\n")
    with pytest.raises(ApplicationError) as refused:
        ingest(path, skip_invalid=True)
    assert refused.value.message.startswith(
        "rows.csv: nothing usable is left: all its documents were skipped (the first: line 2: "
    )
    assert refused.value.details["skipped_total"] == 2
    assert [entry["line"] for entry in refused.value.details["skipped"]] == [2, 3]


def test_a_beir_zip_whose_corpus_lines_were_all_skipped_is_refused(tmp_path: Path, ingest):
    path = tmp_path / "beir.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("corpus.jsonl", ALL_BAD)
        archive.writestr("queries.jsonl", '{"_id": "q1", "text": "a question"}\n')
        archive.writestr("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(ApplicationError) as refused:
        ingest(path, skip_invalid=True)
    assert "corpus.jsonl: nothing usable is left: all its documents were skipped" in (
        refused.value.message
    )
