"""Submitting an audit: params are resolved and checked before a job exists."""

from __future__ import annotations

import pytest

from embedhub.audits import selectors
from embedhub.core.errors import ApplicationError, NotFound
from embedhub.evaluation.models import Query, QuerySet
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


def test_query_set_keyword_selects_the_concept_as_a_literal_by_default(api, ready_index, query_set):
    params = audit_params(ready_index, query_set=query_set.pk, keyword="VITAMIN d")
    del params["queries"], params["concept"]
    response = _submit(api, params)
    assert response.status_code == 202, response.content
    job_params = response.json()["params"]
    assert [q["text"] for q in job_params["queries"]] == VITAMIN_D  # case-insensitive
    assert job_params["concept"] == "VITAMIN d"  # the keyword names an unnamed concept
    assert job_params["query_set"] == query_set.pk and job_params["keyword_regex"] is False
    # As a literal, regex syntax matches nothing: "vitamin\s+d" is not in any query text.
    params["keyword"] = r"vitamin\s+d"
    response = _submit(api, params)
    assert response.status_code == 400 and "0 distinct queries" in _error(response)


def test_keyword_regex_selects_the_concept_with_re2(api, ready_index, query_set):
    params = audit_params(
        ready_index, query_set=query_set.pk, keyword=r"vitamin\s+d", keyword_regex=True
    )
    del params["queries"], params["concept"]
    response = _submit(api, params)
    assert response.status_code == 202, response.content
    job_params = response.json()["params"]
    assert [q["text"] for q in job_params["queries"]] == VITAMIN_D
    assert job_params["keyword_regex"] is True


def test_regex_bomb_keyword_is_answered_by_a_linear_time_engine(user, corpus):
    # (a+)+$ against "aaa...a!" backtracks 2^n ways in Python's re: with 5,000 characters
    # it would never finish, so this test returning at all shows no backtracking engine
    # ran; that the engine is RE2 shows in what it refuses (a backreference).
    qs = QuerySet.objects.create(owner=user, corpus=corpus, name="hostile")
    Query.objects.bulk_create(
        [Query(query_set=qs, external_id=f"q{i}", text="a" * 5000 + "!") for i in range(50)]
        + [Query(query_set=qs, external_id="hit", text="a" * 5000)]
    )
    found = selectors.concept_queries(query_set=qs, keyword="(a+)+$", keyword_regex=True)
    assert [q["id"] for q in found] == ["hit"]
    assert selectors.concept_queries(query_set=qs, keyword="(a+)+$") == []  # as a literal
    # A backreference, nested repetition past RE2's bound of 1000, text that is not UTF-8.
    for refused in (r"(a)\1", "((a{100}){100}){100}", "\ud800"):
        with pytest.raises(ApplicationError, match="not a valid RE2 regular expression"):
            selectors.concept_queries(query_set=qs, keyword=refused, keyword_regex=True)


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
    ({"time_limit_s": 2 * 24 * 3600}, "time_limit_s: must be a number between 1"),
    (
        {"budget": 2, "iterations": 1000, "trigger_len": 30, "positions": 30, "candidates": 512},
        "params.iterations: budget x iterations x (grad_copies + positions x candidates) is "
        "30,728,000 model passes, over the limit of 5,000,000",
    ),
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
        ({"keyword": "vitamin(", "concept": "x"}, "0 distinct queries"),  # a literal
        (
            {"keyword": "vitamin(", "keyword_regex": True, "concept": "x"},
            "params.keyword: 'vitamin(' is not a valid RE2 regular expression",
        ),
        ({"keyword": "vitamin", "keyword_regex": "yes"}, "params.keyword_regex: must be"),
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
