"""An upload names its corpus once: by `corpus` (an id, or the URL's) or by `name`. A name
beside an id is refused rather than ignored, unless it is that corpus's own name."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from embedhub.corpora.models import Corpus
from embedhub.jobs.models import Job
from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db


def _upload(api, url: str = "/api/v1/corpora/upload/", **fields):
    body = {"file": SimpleUploadedFile("docs.jsonl", b'{"_id": "d1", "text": "t"}\n'), **fields}
    return api.post(url, body, format="multipart")


@pytest.fixture
def mine(user) -> Corpus:
    return CorpusFactory(owner=user, name="mine")


def _refused(response, field: str) -> str:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["details"]["field"] == field and field in error["details"]["fields"]
    assert not Job.objects.exists()
    return error["message"]


def test_a_corpus_id_and_another_name_are_refused_naming_name(api, mine):
    message = _refused(_upload(api, corpus=mine.pk, name="other"), "name")
    assert message.startswith("name: give corpus or name, not both")
    assert f"corpus {mine.pk} is named 'mine'" in message
    assert list(Corpus.objects.all()) == [mine]


def test_the_url_corpus_and_another_name_are_refused_too(api, mine):
    message = _refused(_upload(api, f"/api/v1/corpora/{mine.pk}/upload/", name="other"), "name")
    assert "give corpus or name, not both" in message


def test_a_body_corpus_other_than_the_urls_is_refused(api, user, mine):
    other = CorpusFactory(owner=user, name="other")
    response = _upload(api, f"/api/v1/corpora/{mine.pk}/upload/", corpus=other.pk)
    assert "the URL names corpus" in _refused(response, "corpus")


@pytest.mark.parametrize("name", ["mine", " mine "])
def test_a_corpus_id_with_its_own_name_is_accepted(api, mine, name):
    response = _upload(api, corpus=mine.pk, name=name)
    assert response.status_code == 202, response.content
    assert Job.objects.get().corpus_id == mine.pk
