"""An upload into a new corpus name whose ingest fails leaves no corpus behind: the job
keeps its failure (detached from the corpus), its error says the corpus was removed, and a
retry is refused. A corpus that existed before the upload, or that something else uses
by then, is kept, and the error says so."""

from __future__ import annotations

import pytest
from django.conf import settings

from embedhub.corpora.models import Corpus
from embedhub.corpora.services import upload_folder
from embedhub.jobs.models import Job
from tests.corpora.conftest import run_inline, upload_accepted

pytestmark = pytest.mark.django_db(transaction=True)

BAD = b'{"_id": "d1", "text": "fine"}\nnot json\n'
GOOD = b'{"_id": "d1", "text": "fine"}\n'


def _upload(api, *, content: bytes = BAD, **fields) -> Job:
    return upload_accepted(api, content=content, **fields)


def test_a_failed_ingest_into_a_new_corpus_name_removes_the_corpus_and_its_upload(api, user):
    job = _upload(api, name="fresh")
    stored = upload_folder(owner_id=user.pk) / job.params["path"]
    assert stored.is_file()

    job = run_inline(job)

    assert job.status == Job.Status.FAILED and job.corpus_id is None
    assert job.error.startswith("docs.jsonl line 2")
    assert "the corpus 'fresh' that this upload created was removed" in job.error
    assert str(settings.MEDIA_ROOT) not in job.error
    assert not Corpus.objects.filter(owner=user, name="fresh").exists()
    assert not stored.parent.exists()


def test_a_retry_of_an_ingest_whose_corpus_was_removed_is_refused_with_a_409(api):
    job = run_inline(_upload(api, name="fresh"))
    response = api.post(f"/api/v1/jobs/{job.pk}/retry/")
    assert response.status_code == 409, response.content
    assert "upload the file again" in response.json()["error"]["message"]
    assert Job.objects.get(pk=job.pk).status == Job.Status.FAILED


def test_the_same_name_can_be_uploaded_again_after_a_failed_ingest(api, user):
    run_inline(_upload(api, name="fresh"))
    job = run_inline(_upload(api, name="fresh", content=GOOD))
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert Corpus.objects.get(owner=user, name="fresh").documents.count() == 1


def test_a_failed_ingest_into_a_corpus_that_existed_before_keeps_it(api, user):
    response = api.post("/api/v1/corpora/", {"name": "mine"}, format="json")
    assert response.status_code == 201, response.content
    job = run_inline(_upload(api, name="mine"))
    assert job.status == Job.Status.FAILED and job.corpus_id == response.json()["id"]
    assert "corpus" not in job.error.split(":", 1)[1]
    assert Corpus.objects.filter(owner=user, name="mine").exists()


def test_a_new_corpus_another_upload_waits_on_is_kept_and_the_error_says_so(api, user):
    first = _upload(api, name="shared")
    second = _upload(api, name="shared", content=GOOD)
    assert first.corpus_id == second.corpus_id

    first = run_inline(first)

    assert first.status == Job.Status.FAILED and first.corpus_id == second.corpus_id
    assert "the corpus 'shared' that this upload created still exists, empty" in first.error
    assert run_inline(second).status == Job.Status.SUCCEEDED
    assert Corpus.objects.get(owner=user, name="shared").documents.count() == 1
