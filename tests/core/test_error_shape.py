"""Every validation 400 answers one `details` shape, whatever refused it: a serializer of a
plain body, a job's params, a list filter or the NUL guard. A client reads the first bad
field from `details.field` and every bad field's messages from `details.fields`."""

import pytest

from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db


def _refused(response) -> dict:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    details = error["details"]
    assert set(details) >= {"field", "fields"}, details
    assert details["field"] == next(iter(details["fields"]))
    assert all(
        isinstance(messages, list) and all(isinstance(m, str) for m in messages)
        for messages in details["fields"].values()
    ), details
    return error


def test_a_search_body_a_corpus_create_and_job_params_share_one_details_shape(api, user):
    corpus = CorpusFactory(owner=user)
    search = _refused(
        api.post("/api/v1/search/", {"corpus": corpus.pk, "query": "x", "k": 0}, format="json")
    )
    assert search["details"]["field"] == "k"
    assert search["message"] == f"k: {search['details']['fields']['k'][0]}"

    create = _refused(api.post("/api/v1/corpora/", {"description": "no name"}, format="json"))
    assert create["details"]["fields"] == {"name": ["This field is required."]}

    body = {"kind": "embed", "params": {"corpus": corpus.pk, "chunk_window": "12"}}
    job = _refused(api.post("/api/v1/jobs/", body, format="json"))
    assert job["details"]["field"] == "params.chunk_window"
    assert job["details"]["fields"]["params.chunk_window"] == ["must be an integer"]


def test_every_bad_field_is_listed_under_its_flat_path(api, user):
    body = {"corpus": 1, "query": 5, "k": "10", "exact": "yes"}
    error = _refused(api.post("/api/v1/search/", body, format="json"))
    assert set(error["details"]["fields"]) == {"query", "k", "exact"}


def test_a_serializer_wide_check_is_named_non_field_errors(api):
    error = _refused(api.post("/api/v1/search/", {"query": "x"}, format="json"))
    assert error["details"]["fields"] == {"non_field_errors": ["give either corpus or index"]}
    assert error["message"] == "non_field_errors: give either corpus or index"


def test_a_list_filter_and_a_nul_in_a_query_share_it_too(api):
    _refused(api.get("/api/v1/jobs/?corpus=999999"))
    assert _refused(api.get("/api/v1/corpora/?name=a%00b"))["details"]["field"] == "name"
