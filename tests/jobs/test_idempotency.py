"""Idempotency-Key: a retry of the same request gets the job its first request made; the
same key on a different request is a 422 (never another request's job); a key the column
cannot hold is a 400 naming the header. Keys are per user."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from embedhub.corpora.models import Corpus
from embedhub.jobs import selectors
from embedhub.jobs.models import Job
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors.models import VectorIndex
from tests.factories import CorpusFactory
from tests.vectors.conftest import make_documents

pytestmark = pytest.mark.django_db

URL = "/api/v1/jobs/"


@pytest.fixture
def corpus(user):
    corpus = CorpusFactory(owner=user, name="idem")
    make_documents(corpus, 3)
    return corpus


def _embed(corpus, **params) -> dict:
    return {"kind": "embed", "params": {"corpus": corpus.pk, "encoder": "fake:8", **params}}


def _submit(client, body, key: str):
    return client.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def _reused(response) -> dict:
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert error["details"]["field"] == "Idempotency-Key"
    return error


def test_an_identical_retry_returns_the_original_job(api, corpus, model_version):
    first = _submit(api, _embed(corpus), "same-1")
    assert first.status_code == 202, first.content
    again = _submit(api, _embed(corpus), "same-1")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1 and VectorIndex.objects.count() == 1


def test_the_same_key_with_other_params_is_refused_and_makes_nothing(api, corpus, model_version):
    first = _submit(api, _embed(corpus), "same-1")
    error = _reused(_submit(api, _embed(corpus, batch_size=16), "same-1"))
    assert error["details"]["job"] == first.json()["id"]
    assert Job.objects.count() == 1 and VectorIndex.objects.count() == 1


def test_the_same_key_with_another_kind_is_refused(api, corpus, model_version):
    _submit(api, _embed(corpus), "same-1")
    _reused(_submit(api, {"kind": "evaluate", "params": {"corpus": corpus.pk}}, "same-1"))


def test_the_same_key_with_an_invalid_body_is_refused_not_answered_with_the_old_job(
    api, corpus, model_version
):
    _submit(api, _embed(corpus), "same-1")
    _reused(_submit(api, {"kind": "embed", "params": {"corpus": "garbage"}}, "same-1"))


def test_the_key_of_an_upload_is_refused_on_the_jobs_endpoint(api, corpus, model_version):
    upload = SimpleUploadedFile("c.jsonl", b'{"_id": "u1", "text": "t"}\n')
    url = f"/api/v1/corpora/{corpus.pk}/upload/"
    uploaded = api.post(url, {"file": upload}, format="multipart", HTTP_IDEMPOTENCY_KEY="up-1")
    assert uploaded.status_code == 202, uploaded.content
    _reused(_submit(api, _embed(corpus), "up-1"))


def test_keys_are_per_user(api, other_api, other_user, corpus, model_version):
    first = _submit(api, _embed(corpus), "shared-name")
    theirs = CorpusFactory(owner=other_user)
    make_documents(theirs, 2)
    other = _submit(other_api, _embed(theirs), "shared-name")
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_a_key_longer_than_the_column_is_a_400_naming_the_header(api, corpus, model_version):
    response = _submit(api, _embed(corpus), "k" * 201)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["details"] == {
        "field": "Idempotency-Key",
        "fields": {"Idempotency-Key": ["at most 200 characters, not 201"]},
    }
    assert error["message"] == "Idempotency-Key: at most 200 characters, not 201"
    assert not Job.objects.exists() and not VectorIndex.objects.exists()
    assert _submit(api, _embed(corpus), "k" * 200).status_code == 202


def test_a_key_with_a_control_character_is_a_400(api, corpus, model_version):
    response = _submit(api, _embed(corpus), "a\x00b")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"] == {
        "field": "Idempotency-Key",
        "fields": {"Idempotency-Key": ["printable characters only"]},
    }
    assert not Job.objects.exists()


def test_a_key_from_before_fingerprints_answers_any_retry_with_its_job(api, user, corpus):
    legacy = Job.objects.create(owner=user, kind="embed", params={}, idempotency_key="old-1")
    response = _submit(api, _embed(corpus), "old-1")
    assert response.status_code == 200 and response.json()["id"] == legacy.pk


@pytest.fixture
def lose_the_race(monkeypatch):
    """Armed after the winner's job exists: this request sees neither it nor its index
    before its own insert, as when a concurrent request with the same key commits between
    this one's lookups and its insert. Returns the key lookups made (the third, after the
    insert failed, finds the winner)."""
    real, calls = selectors.job_by_idempotency_key, []

    def lookup(**kwargs):
        calls.append(kwargs)
        return None if len(calls) <= 2 else real(**kwargs)

    def arm() -> list:
        monkeypatch.setattr(selectors, "job_by_idempotency_key", lookup)
        # So the loser's prepare creates an index of its own, which must not outlive it.
        monkeypatch.setattr(vector_selectors, "index_matching", lambda **kwargs: None)
        return calls

    return arm


def _winner(user, corpus, body) -> Job:
    from embedhub.jobs.submission import job_submit_checked

    job, created = job_submit_checked(
        user=user, kind=body["kind"], params=body["params"], idempotency_key="race-1"
    )
    assert created
    return job


def test_losing_the_key_race_to_the_same_request_returns_its_job_and_leaves_nothing(
    api, user, corpus, model_version, lose_the_race
):
    winner = _winner(user, corpus, _embed(corpus))
    lookups = lose_the_race()
    response = _submit(api, _embed(corpus), "race-1")
    assert response.status_code == 200 and response.json()["id"] == winner.pk
    assert len(lookups) == 3  # the insert lost, then the winner was found
    assert Job.objects.count() == 1 and VectorIndex.objects.count() == 1  # no second index


def test_losing_the_key_race_to_another_request_is_refused_and_leaves_nothing(
    api, user, corpus, model_version, lose_the_race
):
    _winner(user, corpus, _embed(corpus, batch_size=16))
    lookups = lose_the_race()
    _reused(_submit(api, _embed(corpus), "race-1"))
    assert len(lookups) == 3
    assert Job.objects.count() == 1 and VectorIndex.objects.count() == 1


def test_an_upload_with_a_key_longer_than_the_column_is_a_400_and_leaves_nothing(api):
    upload = SimpleUploadedFile("c.jsonl", b'{"_id": "u1", "text": "t"}\n')
    body = {"file": upload, "name": "idem-long"}
    response = api.post(
        "/api/v1/corpora/upload/", body, format="multipart", HTTP_IDEMPOTENCY_KEY="k" * 300
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"]["field"] == "Idempotency-Key"
    assert response.json()["error"]["details"]["fields"] == {
        "Idempotency-Key": ["at most 200 characters, not 300"]
    }
    assert not Corpus.objects.filter(name="idem-long").exists() and not Job.objects.exists()


def _upload(client, *, name: str, key: str, content: bytes = b'{"_id": "u1", "text": "t"}\n'):
    upload = SimpleUploadedFile("c.jsonl", content)
    return client.post(
        "/api/v1/corpora/upload/",
        {"file": upload, "name": name},
        format="multipart",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def test_an_upload_retried_with_its_key_answers_with_its_job_and_stores_nothing_more(api):
    first = _upload(api, name="idem-up", key="up-retry")
    again = _upload(api, name="idem-up", key="up-retry")
    assert first.status_code == 202 and again.status_code in (200, 202), again.content
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1 and Corpus.objects.filter(name="idem-up").count() == 1


def test_an_upload_key_reused_for_another_upload_is_refused_and_leaves_nothing(api):
    assert _upload(api, name="idem-a", key="up-twice").status_code == 202
    _reused(_upload(api, name="idem-b", key="up-twice", content=b'{"_id": "x", "text": "y"}\n'))
    assert not Corpus.objects.filter(name="idem-b").exists() and Job.objects.count() == 1


def test_a_job_key_reused_for_an_upload_is_refused(api, corpus, model_version):
    assert _submit(api, _embed(corpus), "job-then-upload").status_code == 202
    _reused(_upload(api, name="idem-c", key="job-then-upload"))
    assert not Corpus.objects.filter(name="idem-c").exists()
