"""POST /search/ names the request field each of its refusals is about, in the validation
shape ({"field": "corpus", "fields": {"corpus": [message]}}), as a job's params do: an id
the caller may not see (404), an index that cannot be searched yet, a query version the
index cannot take. Another account's id answers exactly as a missing one does."""

import numpy as np
import pytest

from embedhub.registry.models import ModelVersion
from embedhub.vectors.services import index_create
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from tests.factories import CorpusFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db

MISSING = 987654
URL = "/api/v1/search/"


@pytest.fixture
def alices(user, model_version):
    corpus = CorpusFactory(owner=user, name="alices")
    add_documents(corpus, numbered_texts(5))
    index = build_index(owner=user, corpus=corpus, model_version=model_version)  # fake:64
    private = ModelVersionFactory(
        owner=user, parent=model_version, visibility=ModelVersion.Visibility.PRIVATE
    )
    return {"corpus": corpus.pk, "index": index.pk, "model_version": private.pk}


def _named(response, *, status: int, field: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    (message,) = error["details"]["fields"][field]
    assert error["details"] == {"field": field, "fields": {field: [message]}}
    assert error["message"] == f"{field}: {message}"
    return error


def _answer(response, value: int) -> tuple[int, str]:
    return response.status_code, response.content.decode().replace(str(value), "<id>")


@pytest.mark.parametrize("field", ["corpus", "index", "model_version"])
def test_another_accounts_id_is_a_404_naming_the_field_as_a_missing_id_is(
    api, other_api, other_user, alices, model_version, field
):
    # A version is named with an index of the searcher's own (compensation none: the
    # private version has no drift vector, and what is tested is whose it is).
    mallorys = CorpusFactory(owner=other_user, name="mallorys")
    add_documents(mallorys, numbered_texts(5))
    own = build_index(owner=other_user, corpus=mallorys, model_version=model_version)
    with_index = {"index": own.pk, "compensation": "none"}
    context = with_index if field == "model_version" else {}

    def search(client, value: int, **extra):
        body = {**context, field: value, "query": "x", **extra}
        return client.post(URL, body, format="json")

    foreign = _answer(search(other_api, alices[field]), alices[field])
    missing = _answer(search(other_api, MISSING), MISSING)
    assert foreign == missing
    error = _named(search(other_api, MISSING), status=404, field=field)
    assert error["code"] == "not_found"
    noun = field.replace("_", " ")
    assert error["details"]["fields"][field] == [f"{noun} {MISSING} not found"]
    mine = {"index": alices["index"]} if field == "model_version" else {}
    assert search(api, alices[field], **mine).status_code == 200


def test_an_index_still_building_names_the_index(api, user, model_version):
    corpus = CorpusFactory(owner=user)
    index = index_create(owner=user, corpus=corpus, model_version=model_version, encoder="fake:8")
    response = api.post(URL, {"index": index.pk, "query": "x"}, format="json")
    error = _named(response, status=400, field="index")
    assert "building, not searchable yet" in error["message"]


def test_a_corpus_without_an_active_index_names_the_corpus(api, user):
    corpus = CorpusFactory(owner=user)
    response = api.post(URL, {"corpus": corpus.pk, "query": "x"}, format="json")
    assert _named(response, status=400, field="corpus")["code"] == "no_active_index"


def test_drift_vectors_of_another_width_name_the_model_version(api, alices, model_version):
    child = ModelVersionFactory(
        model=model_version.model, parent=model_version, drift=np.full(384, 0.01).tolist()
    )
    body = {"index": alices["index"], "query": "x", "model_version": child.pk}
    response = api.post(URL, {**body, "compensation": "qdc"}, format="json")
    error = _named(response, status=400, field="model_version")
    assert error["code"] == "incompatible_drift"
    assert "64-dimensional vectors" in error["message"]
