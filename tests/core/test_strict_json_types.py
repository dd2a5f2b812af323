"""A JSON body is typed: every body, not only a job's params, refuses "10" for 10 and
"true" for true, naming the field. A form-encoded or multipart body (the browsable API,
the dashboard's forms) only has strings, so there the same fields parse them."""

import pytest

from embedhub.corpora.models import Corpus
from embedhub.vectors.models import ServingPolicy
from tests.factories import CorpusFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db


def _type_error(response, field: str) -> str:
    assert response.status_code == 400, response.content
    details = response.json()["error"]["details"]
    assert field in details["fields"], details
    return details["fields"][field][0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("k", "10", "must be an integer"),
        ("k", 2.5, "must be an integer"),
        ("exact", "true", "must be true or false"),
        ("exact", 1, "must be true or false"),
        ("query", 42, "must be a string"),
        ("corpus", "1", "must be an integer"),
        ("ef_search", True, "must be an integer"),
        ("compensation", 1, "1 is not one of"),
    ],
)
def test_search_refuses_a_wrong_json_type_by_name(api, user, field, value, message):
    body = {"corpus": CorpusFactory(owner=user).pk, "query": "x", field: value}
    assert message in _type_error(api.post("/api/v1/search/", body, format="json"), field)


def test_corpus_create_refuses_a_number_for_a_name_or_description(api):
    refused = api.post("/api/v1/corpora/", {"name": 5}, format="json")
    assert _type_error(refused, "name") == "must be a string"
    refused = api.post("/api/v1/corpora/", {"name": "a", "description": 7}, format="json")
    assert _type_error(refused, "description") == "must be a string"
    assert not Corpus.objects.exists()


def test_policy_patch_refuses_a_string_tolerance_in_json_and_changes_nothing(api, user):
    url = f"/api/v1/corpora/{CorpusFactory(owner=user).pk}/policy/"
    refused = api.patch(url, {"tolerance": "0.2"}, format="json")
    assert _type_error(refused, "tolerance") == "must be a number"
    refused = api.patch(url, {"allow_reindex": "false"}, format="json")
    assert _type_error(refused, "allow_reindex") == "must be true or false"
    assert not ServingPolicy.objects.filter(tolerance=0.2).exists()


def test_screening_patch_refuses_a_string_boolean_in_json(api, user):
    url = f"/api/v1/corpora/{CorpusFactory(owner=user).pk}/screening/"
    refused = api.patch(url, {"enabled": "true"}, format="json")
    assert _type_error(refused, "enabled") == "must be true or false"
    refused = api.patch(url, {"enabled": True, "fpr": "0.1"}, format="json")
    assert _type_error(refused, "fpr") == "must be a number"
    assert not Corpus.objects.get().screening_enabled


def test_job_kind_and_version_parent_refuse_a_wrong_json_type(api, staff_api):
    refused = api.post("/api/v1/jobs/", {"kind": 1, "params": {}}, format="json")
    assert "1 is not one of" in _type_error(refused, "kind")
    parent = ModelVersionFactory()
    refused = staff_api.post("/api/v1/model-versions/", {"parent": str(parent.pk)}, format="json")
    assert _type_error(refused, "parent") == "must be an integer id"


@pytest.mark.parametrize("format", ["multipart", None])
def test_form_bodies_still_send_their_values_as_strings(api, user, format):
    corpus = CorpusFactory(owner=user)
    kwargs = {"format": format} if format else {"content_type": "application/x-www-form-urlencoded"}
    if format is None:
        policy = api.patch(
            f"/api/v1/corpora/{corpus.pk}/policy/", "tolerance=0.2&allow_reindex=false", **kwargs
        )
    else:
        policy = api.patch(
            f"/api/v1/corpora/{corpus.pk}/policy/",
            {"tolerance": "0.2", "allow_reindex": "false"},
            **kwargs,
        )
    assert policy.status_code == 200, policy.content
    assert (policy.json()["tolerance"], policy.json()["allow_reindex"]) == (0.2, False)
    screening = api.patch(
        f"/api/v1/corpora/{corpus.pk}/screening/", {"fpr": "0.1"}, format="multipart"
    )
    assert screening.status_code == 200, screening.content
    assert screening.json()["fpr"] == 0.1
