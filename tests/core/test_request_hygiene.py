"""Requests that no view could handle well are refused before or while they are read, in
the one error shape: a NUL in the URL, a JSON body nested too deep, a body over the
in-memory limit. Never a 500, never Django's HTML page from the API."""

import json

import pytest
from django.test import override_settings

from embedhub.core.parsers import MAX_JSON_DEPTH
from embedhub.jobs.models import Job
from tests.factories import CorpusFactory, DocumentFactory

pytestmark = pytest.mark.django_db


def _refused(response, *, status: int = 400) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    return response.json()["error"]


# Every kind of list filter: django-filter's, a plain IntegerField's, hand-read ones that
# went straight into an ORM filter (name, model, external_id, concept).
NUL_QUERIES = [
    ("/api/v1/corpora/", "name"),
    ("/api/v1/model-versions/", "model"),
    ("/api/v1/model-versions/", "status"),
    ("/api/v1/audits/comparison/", "concept"),
    ("/api/v1/audits/", "concept"),
    ("/api/v1/jobs/", "kind"),
    ("/api/v1/jobs/", "corpus"),
    ("/api/v1/indexes/", "state"),
    ("/api/v1/eval-runs/", "compensation"),
    ("/api/v1/query-sets/", "corpus"),
    ("/api/v1/eval-runs/1/", "per_query"),
]


@pytest.mark.parametrize(("url", "param"), NUL_QUERIES)
def test_a_nul_in_a_query_parameter_is_a_400_naming_it(api, url, param):
    error = _refused(api.get(f"{url}?{param}=a%00b"))
    problem = ["must not contain a NUL character (%00)"]
    assert error["details"] == {"field": param, "fields": {param: problem}, "location": "query"}
    assert error["message"] == f"{param}: must not contain a NUL character (%00)"


def test_a_nul_in_a_corpus_document_filter_and_path_is_a_400(api, user):
    corpus = CorpusFactory(owner=user)
    DocumentFactory(corpus=corpus, external_id="d1")
    base = f"/api/v1/corpora/{corpus.pk}/documents/"
    assert _refused(api.get(f"{base}?external_id=%00"))["details"]["field"] == "external_id"
    error = _refused(api.get(f"{base}d%001/"))
    assert error["details"]["field"] == "path" and error["details"]["location"] == "path"
    assert "URL path" in error["message"]
    assert api.get(f"{base}d1/").status_code == 200  # the same URL without it still works


def test_a_nul_in_a_query_parameter_name_is_a_400_too(api):
    assert _refused(api.get("/api/v1/corpora/?na%00me=x"))["details"]["field"] == "na\\x00me"


def test_a_nul_on_a_dashboard_page_is_a_plain_400(client, user):
    client.force_login(user)
    for url in ["/jobs/?corpus=%00", "/search/?corpus=1%00", "/corpora/%00/"]:
        response = client.get(url)
        assert response.status_code == 400, url
        assert response["Content-Type"].startswith("text/plain")
        assert b"NUL character" in response.content


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("levels", [100_000, MAX_JSON_DEPTH + 1])
def test_a_deeply_nested_json_body_is_a_parse_error(api, user, levels):
    corpus = CorpusFactory(owner=user)
    bodies = {
        "/api/v1/jobs/": f'{{"kind": "embed", "params": {{"corpus": {corpus.pk}, "x": {_deep(levels)}}}}}',
        "/api/v1/search/": f'{{"corpus": {corpus.pk}, "query": "x", "k": {_deep(levels)}}}',
    }
    for url, body in bodies.items():
        response = api.generic("POST", url, body, content_type="application/json")
        error = _refused(response)
        assert error["code"] == "parse_error"
        assert f"nested deeper than {MAX_JSON_DEPTH} levels" in error["message"]
    assert not Job.objects.exists()


def test_a_json_body_nested_within_the_bound_still_reaches_validation(api, user):
    corpus = CorpusFactory(owner=user)
    body = {"kind": "embed", "params": {"corpus": corpus.pk, "x": json.loads(_deep(10))}}
    error = _refused(api.post("/api/v1/jobs/", body, format="json"))
    assert error["details"]["field"] == "params.x"  # an unknown param, not a parse error


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_a_body_over_the_in_memory_limit_is_a_413_in_the_error_shape(api, user):
    body = json.dumps({"kind": "embed", "params": {"corpus": 1, "x": "a" * 5000}})
    response = api.generic("POST", "/api/v1/jobs/", body, content_type="application/json")
    error = _refused(response, status=413)
    assert error["code"] == "request_too_large"
    assert error["details"] == {"limit": 1000}
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in error["message"]
    assert not Job.objects.exists()


def test_too_many_query_parameters_are_a_400_in_the_error_shape(api):
    query = "&".join(f"p{i}=1" for i in range(1100))
    error = _refused(api.get(f"/api/v1/corpora/?{query}"))
    assert error["code"] == "too_many_fields"
