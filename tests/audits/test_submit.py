"""Submitting an audit: params are resolved and checked before a job exists."""

from __future__ import annotations

import pytest

from embedhub.audits import selectors
from embedhub.core.errors import NotFound
from embedhub.jobs.models import Job
from tests.audits.conftest import MESSAGE, VITAMIN_D, audit_params

pytestmark = pytest.mark.django_db


def _submit(api, params):
    return api.post("/api/v1/jobs/", {"kind": "audit", "params": params}, format="json")


def _error(response) -> str:
    return response.json()["error"]["message"]


def test_inline_concept_is_normalised_into_the_job(api, ready_index):
    response = _submit(api, audit_params(ready_index))
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.kind == "audit" and job.queue == "gpu"
    assert job.corpus_id == ready_index.corpus_id
    params = job.params
    assert [q["text"] for q in params["queries"]] == VITAMIN_D
    assert params["budget"] == 2 and params["held_in"] == 0.5 and params["seed"] == 0
    assert params["iterations"] == 3 and params["time_limit_s"] is None


def test_corpus_resolves_to_its_active_index(api, ready_index):
    params = audit_params(ready_index)
    del params["index"]
    params["corpus"] = ready_index.corpus_id
    response = _submit(api, params)
    assert response.status_code == 202, response.content
    assert response.json()["params"]["index"] == ready_index.pk


def test_query_set_keyword_selects_the_concept(api, ready_index, query_set):
    params = audit_params(ready_index, query_set=query_set.pk, keyword=r"vitamin\s+d")
    del params["queries"], params["concept"]
    response = _submit(api, params)
    assert response.status_code == 202, response.content
    job_params = response.json()["params"]
    assert [q["text"] for q in job_params["queries"]] == VITAMIN_D
    assert job_params["concept"] == r"vitamin\s+d"  # the keyword names an unnamed concept
    assert job_params["query_set"] == query_set.pk


def test_query_set_ids_select_the_concept(api, ready_index, query_set):
    params = audit_params(
        ready_index, query_set=query_set.pk, query_ids=["q0", "q1", "q2", "q3"], budget=1
    )
    del params["queries"]
    response = _submit(api, params)
    assert response.status_code == 202, response.content
    assert [q["id"] for q in response.json()["params"]["queries"]] == ["q0", "q1", "q2", "q3"]


BAD_PARAMS = [
    ({"queries": VITAMIN_D[:3]}, "at least 4"),
    ({"queries": VITAMIN_D[:2] * 3}, "2 distinct queries"),
    ({"budget": 5}, "only 4 held-in queries"),
    ({"budget": 0}, "budget: must be an integer between 1 and 50"),
    ({"trigger_len": "thirty"}, "trigger_len: must be an integer"),
    ({"trigger_len": 300}, "trigger_len: must be an integer between 1 and 200"),
    ({"trigger_len": 200, "message": MESSAGE * 10}, "over the model's 256"),
    ({"positions": 9}, "more than trigger_len"),
    ({"held_in": 1.5}, "held_in: must be a number between 0.1 and 0.9"),
    ({"held_in": True}, "held_in: must be a number"),
    ({"time_limit_s": 0}, "time_limit_s"),
    ({"message": "  "}, "message: required"),
    ({"concept": ""}, "concept: give the concept a name"),
    ({"queries": "vitamin d"}, "queries: must be a list"),
]


def test_bad_params_are_refused_with_a_clear_message(api, ready_index):
    for overrides, fragment in BAD_PARAMS:
        response = _submit(api, audit_params(ready_index, **overrides))
        assert response.status_code == 400, (overrides, response.content)
        assert fragment in _error(response), (overrides, _error(response))
    assert not Job.objects.exists()  # a refused request leaves no job behind


def test_bad_query_set_selections_are_refused(api, ready_index, query_set):
    base = audit_params(ready_index, query_set=query_set.pk)
    del base["queries"]
    cases = [
        ({}, "exactly one of keyword or query_ids"),
        ({"queries": VITAMIN_D}, "either as queries (inline) or as query_set"),
        ({"keyword": "vitamin(", "concept": "x"}, "not a valid regular expression"),
        ({"keyword": "astronomy"}, "0 distinct queries"),
        ({"query_ids": ["q0", "nope"]}, "1 not in query set"),
    ]
    for overrides, fragment in cases:
        response = _submit(api, {**base, **overrides})
        assert response.status_code == 400, (overrides, response.content)
        assert fragment in _error(response), (overrides, _error(response))


def test_other_users_index_and_query_set_are_not_found(
    other_api, other_user, ready_index, query_set
):
    response = _submit(other_api, audit_params(ready_index))
    assert response.status_code == 404
    assert f"index {ready_index.pk} not found" in _error(response)
    with pytest.raises(NotFound, match=f"query_set {query_set.pk} not found"):
        selectors.query_set_get(user=other_user, query_set_id=query_set.pk)


def test_fake_encoder_index_is_refused(api, ready_index):
    ready_index.encoder = "fake:64"
    ready_index.save(update_fields=["encoder"])
    response = _submit(api, audit_params(ready_index))
    assert response.status_code == 400
    assert "test encoder" in _error(response)
