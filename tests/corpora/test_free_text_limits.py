"""Free text a user sets over the API is bounded at the request: a TextField has no limit
of its own, so a corpus's description could otherwise be as long as the body limit."""

import pytest

from embedhub.core.serializers import MAX_FREE_TEXT
from embedhub.corpora.models import Corpus

pytestmark = pytest.mark.django_db


def test_a_corpus_description_over_the_limit_is_a_400_naming_it(api):
    body = {"name": "long", "description": "x" * (MAX_FREE_TEXT + 1)}
    response = api.post("/api/v1/corpora/", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["details"]["field"] == "description"
    assert error["message"] == (
        f"description: must be at most {MAX_FREE_TEXT} characters, not {MAX_FREE_TEXT + 1}"
    )
    assert not Corpus.objects.exists()


def test_a_description_at_the_limit_is_stored_whole(api):
    body = {"name": "long", "description": "x" * MAX_FREE_TEXT}
    response = api.post("/api/v1/corpora/", body, format="json")
    assert response.status_code == 201, response.content
    assert len(Corpus.objects.get().description) == MAX_FREE_TEXT


def test_a_model_version_source_longer_than_its_column_is_a_400(staff_api):
    response = staff_api.post("/api/v1/model-versions/", {"source": "x" * 1025}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"]["field"] == "source"
