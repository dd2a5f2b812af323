"""A refused corpus upload leaves nothing behind: no corpus, no job, no stored file; and
the mapping is checked at submission (only "metadata" takes a list of columns), its errors
named by the form field the client sent ("mapping.id"), not the job param it fills."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DatabaseError

from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Corpus
from embedhub.corpora.services import corpus_upload
from embedhub.jobs.models import Job
from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db

CSV = b"_id,title,text,lang\n1,One,first,en\n"


def _stored_files() -> set[Path]:
    """Every stored upload (MEDIA_ROOT outlives a test, so compare before and after)."""
    return {p for p in (Path(settings.MEDIA_ROOT) / "uploads").rglob("*") if p.is_file()}


def _names(error: dict, field: str) -> bool:
    details = error["details"]
    return field in (details.get("field"), *details.get("fields", {}))


def _upload(api, *, url="/api/v1/corpora/upload/", **fields):
    body = {"file": SimpleUploadedFile("good.csv", CSV), **fields}
    if isinstance(body.get("mapping"), dict):
        body["mapping"] = json.dumps(body["mapping"])
    return api.post(url, body, format="multipart")


@pytest.mark.parametrize(
    "mapping,field",
    [
        ({"id": ["_id", "title"]}, "mapping.id"),
        ({"text": ["text"]}, "mapping.text"),
        ({"title": []}, "mapping.title"),
        ({"author": ["lang"]}, "mapping.author"),
        ({"metadata": "lang"}, "mapping.metadata"),
        ({"metadata": ["lang", 5]}, "mapping.metadata"),
    ],
)
def test_a_list_for_a_mapping_field_other_than_metadata_is_a_400_naming_mapping_key(
    api, user, mapping, field
):
    _assert_mapping_refused(api, mapping, field)


@pytest.mark.parametrize(
    "mapping,field",
    [
        ({"id": "a\u0000b"}, "mapping.id"),
        ({"metadata": ["x\u0000"]}, "mapping.metadata"),
    ],
)
def test_a_mapping_column_with_a_nul_character_is_a_400_naming_mapping_key(
    api, user, mapping, field
):
    _assert_mapping_refused(api, mapping, field)


def _assert_mapping_refused(api, mapping: dict, field: str) -> None:
    before = _stored_files()
    response = _upload(api, name="mapped", mapping=mapping)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["details"]["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert not Corpus.objects.exists() and not Job.objects.exists()
    assert _stored_files() == before


def test_a_list_of_metadata_columns_is_accepted(api, user):
    response = _upload(api, name="mapped", mapping={"id": "_id", "metadata": ["lang"]})
    assert response.status_code == 202, response.content
    assert Job.objects.get().params["mapping"] == {"id": "_id", "metadata": ["lang"]}


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"mapping": {"id": 5}}, "mapping.id"),
        ({"mapping": {"id": ["_id", "title"]}}, "mapping.id"),
        ({"mapping": "[" * 5000 + "]" * 5000}, "mapping"),
        ({"mapping": '{"id": "\\ud800"}'}, "mapping"),
    ],
    ids=["mapping not a column", "mapping a list", "mapping nested deep", "mapping surrogate"],
)
def test_a_refused_upload_into_a_new_corpus_leaves_no_corpus_and_no_stored_file(
    api, user, fields, field
):
    before = _stored_files()
    response = _upload(api, name="leftover", **fields)
    assert response.status_code == 400, response.content
    assert _names(response.json()["error"], field)
    assert not Corpus.objects.filter(name="leftover").exists() and not Job.objects.exists()
    assert _stored_files() == before


def test_a_refused_upload_into_an_existing_corpus_leaves_no_stored_file(api, user):
    corpus = CorpusFactory(owner=user)
    before = _stored_files()
    response = _upload(api, url=f"/api/v1/corpora/{corpus.pk}/upload/", mapping={"id": 5})
    assert response.status_code == 400, response.content
    assert _stored_files() == before and not Job.objects.exists()
    assert list(Corpus.objects.all()) == [corpus]


def test_an_upload_refused_for_its_idempotency_key_leaves_no_corpus_and_no_file(user):
    # The key's length is checked elsewhere (a 400 there, or the database's refusal here):
    # either way the corpus and the stored file the upload made first must go with it.
    before = _stored_files()
    with pytest.raises((ApplicationError, DatabaseError)):
        corpus_upload(
            owner=user,
            uploaded_file=SimpleUploadedFile("good.csv", CSV),
            corpus_name="idem-long",
            idempotency_key="k" * 300,
        )
    assert not Corpus.objects.exists() and not Job.objects.exists()
    assert _stored_files() == before


def test_an_accepted_upload_keeps_its_corpus_and_its_stored_file(api, user):
    before = _stored_files()
    response = _upload(api, name="kept")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["id"])
    [stored] = _stored_files() - before
    assert stored.read_bytes() == CSV and stored.name == "good.csv"
    assert job.corpus == Corpus.objects.get(owner=user, name="kept")


@pytest.mark.parametrize("into", ["new", "existing"])
def test_a_mapping_error_names_the_form_field_not_a_job_param(api, user, into):
    url = "/api/v1/corpora/upload/"
    if into == "existing":
        url = f"/api/v1/corpora/{CorpusFactory(owner=user).pk}/upload/"
    response = _upload(api, url=url, name="mapped", mapping='{"id": 5}')
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["details"]["fields"] == {
        "mapping.id": ['must be one column name, e.g. {"id": "doc_id", "text": "body"}']
    }
    assert error["message"].startswith("mapping.id: must be one column name")
    assert not Job.objects.exists()
