"""The evaluate job's params are checked at submission: a bad request never leaves a job."""

import pytest

from embedhub.jobs.models import Job
from embedhub.vectors.services import index_create
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from tests.factories import CorpusFactory, ModelVersionFactory


@pytest.fixture
def setup(user, corpus, model_version, make_query_set):
    add_documents(corpus, numbered_texts(20))
    index = build_index(owner=user, corpus=corpus, model_version=model_version)
    query_set = make_query_set(
        owner=user, corpus=corpus, queries={"q1": "hello"}, qrels=[("q1", "d3", 1)]
    )
    return index, query_set


def _submit(client, **params):
    return client.post("/api/v1/jobs/", {"kind": "evaluate", "params": params}, format="json")


def test_valid_params_are_normalised(api, setup):
    index, query_set = setup
    response = _submit(
        api,
        corpus=index.corpus_id,
        query_set=query_set.pk,
        mode="ann",
        ef_search=64,
        exclude_self=True,
    )
    assert response.status_code == 202, response.content
    assert response.json()["params"] == {
        "index": index.pk,
        "query_set": query_set.pk,
        "model_version": index.model_version_id,
        "compensation": "auto",
        "mode": "ann",
        "ef_search": 64,
        "k": 100,
        "exclude_self": True,
    }


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"query_set": 999999}, 404, ["query set 999999 not found"]),
        ({}, 400, ["query_set", "required"]),
        ({"mode": "fuzzy"}, 400, ["mode", "exact", "ann"]),
        ({"k": 0}, 400, ["k", "between 1 and 1000"]),
        ({"k": "ten"}, 400, ["k", "integer"]),
        ({"ef_search": 50}, 400, ["ef_search", '"ann"']),
        ({"compensation": "magic"}, 400, ["compensation", "qdc"]),
        ({"exclude_self": "maybe"}, 400, ["exclude_self", "true or false"]),
        ({"model_version": 999999}, 404, ["params.model_version", "not found"]),
        ({"k": "12"}, 400, ["params.k", "must be an integer"]),
        ({"k": 12.5}, 400, ["params.k", "must be an integer"]),
        ({"exclude_self": "true"}, 400, ["params.exclude_self", "true or false"]),
        ({"kk": 1}, 400, ["params.kk", "unknown field"]),
    ],
)
def test_bad_params_are_refused_with_the_field_named(api, setup, params, status, words):
    index, query_set = setup
    body = {"index": index.pk, "query_set": query_set.pk, **params}
    if params == {}:
        del body["query_set"]
    response = _submit(api, **body)
    assert response.status_code == status, response.content
    message = response.json()["error"]["message"]
    for word in words:
        assert word in message
    assert not Job.objects.exists()


def test_query_set_of_another_corpus_is_refused(api, user, setup, make_query_set):
    index, _ = setup
    other = CorpusFactory(owner=user)
    add_documents(other, {"x1": "text"})
    foreign = make_query_set(owner=user, corpus=other, queries={"q": "t"}, qrels=[("q", "x1", 1)])
    response = _submit(api, index=index.pk, query_set=foreign.pk)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert f"query set {foreign.pk}" in message and f"corpus {other.pk}" in message


def test_index_not_ready_is_refused(api, user, corpus, model_version, make_query_set):
    add_documents(corpus, {"d1": "text"})
    index = index_create(owner=user, corpus=corpus, model_version=model_version, encoder="fake:8")
    query_set = make_query_set(
        owner=user, corpus=corpus, queries={"q": "t"}, qrels=[("q", "d1", 1)]
    )
    response = _submit(api, index=index.pk, query_set=query_set.pk)
    assert response.status_code == 400
    assert f"index {index.pk} is building" in response.json()["error"]["message"]
    # Without an explicit index, the corpus must have an active one.
    response = _submit(api, corpus=corpus.pk, query_set=query_set.pk)
    assert response.status_code == 400
    assert "no active index" in response.json()["error"]["message"]


def test_unrelated_query_version_is_refused(api, setup):
    index, query_set = setup
    stranger = ModelVersionFactory()  # not a descendant of the index's version
    response = _submit(api, index=index.pk, query_set=query_set.pk, model_version=stranger.pk)
    assert response.status_code == 400
    assert "does not descend" in response.json()["error"]["message"]


def test_other_users_index_and_query_set_are_404(
    other_api, other_user, setup, model_version, make_query_set
):
    index, query_set = setup
    assert _submit(other_api, index=index.pk, query_set=query_set.pk).status_code == 404
    # Mallory's own index with Alice's query set: the query set is what is not found.
    own = CorpusFactory(owner=other_user)
    add_documents(own, numbered_texts(5))
    own_index = build_index(owner=other_user, corpus=own, model_version=model_version)
    response = _submit(other_api, index=own_index.pk, query_set=query_set.pk)
    assert response.status_code == 404
    assert f"query set {query_set.pk} not found" in response.json()["error"]["message"]
    assert not Job.objects.exists()


def test_exclude_self_defaults_to_the_corpus_setting_and_a_request_overrides_it(api, setup):
    index, query_set = setup
    url = f"/api/v1/corpora/{index.corpus_id}/policy/"
    base = {"index": index.pk, "query_set": query_set.pk}
    assert _submit(api, **base).json()["params"]["exclude_self"] is False
    response = api.patch(url, {"exclude_self": True}, format="json")
    assert response.status_code == 200 and response.json()["exclude_self"] is True
    assert _submit(api, **base).json()["params"]["exclude_self"] is True
    assert _submit(api, **base, exclude_self=False).json()["params"]["exclude_self"] is False
    refused = api.patch(url, {"exclude_self": "sometimes"}, format="json")
    assert refused.status_code == 400 and "exclude_self" in refused.content.decode()


def test_another_users_exclude_self_setting_is_404_and_changes_nothing(api, other_api, setup):
    index, query_set = setup
    url = f"/api/v1/corpora/{index.corpus_id}/policy/"
    assert other_api.patch(url, {"exclude_self": True}, format="json").status_code == 404
    response = _submit(api, index=index.pk, query_set=query_set.pk)
    assert response.json()["params"]["exclude_self"] is False
