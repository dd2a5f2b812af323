"""`POST /jobs/` takes JSON only: a form or multipart body cannot carry nested params (its
"params" field would read as absent), so it is a 415 in the one error shape, and the
schema offers only application/json. Params that are not an object are said to be so."""

from __future__ import annotations

import json

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from embedhub.core.errors import ApplicationError
from embedhub.jobs.models import Job
from embedhub.jobs.submission import job_submit_checked
from tests.factories import CorpusFactory, ModelVersionFactory
from tests.vectors.conftest import make_documents

pytestmark = pytest.mark.django_db


@pytest.fixture
def embed(user) -> dict:
    corpus = CorpusFactory(owner=user)
    make_documents(corpus, 3)
    return {"corpus": corpus.pk, "model_version": ModelVersionFactory().pk, "encoder": "fake:8"}


@pytest.mark.parametrize("fmt", ["multipart", "form"])
def test_a_form_or_multipart_body_is_a_415_in_the_error_shape(api, embed, fmt):
    if fmt == "form":  # as an HTML form posts it
        body = f"kind=embed&params={json.dumps(embed)}"
        response = api.post("/api/v1/jobs/", body, content_type="application/x-www-form-urlencoded")
    else:
        body = {"kind": "embed", "params": json.dumps(embed)}
        response = api.post("/api/v1/jobs/", body, format="multipart")
    assert response.status_code == 415, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "unsupported_media_type"
    assert not Job.objects.exists()


def test_the_schema_offers_only_json_for_a_submission():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    content = schema["paths"]["/api/v1/jobs/"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json"}


def test_the_browsable_api_offers_a_json_raw_form_and_its_json_post_is_accepted(user, embed):
    browser = APIClient()
    browser.force_login(user)
    page = browser.get("/api/v1/jobs/", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'value="application/json"' in html and "multipart/form-data" not in html
    body = json.dumps({"kind": "embed", "params": embed})
    response = browser.post("/api/v1/jobs/", body, content_type="application/json")
    assert response.status_code == 202, response.content


@pytest.mark.parametrize(
    ("params", "said"),
    [("s", "a string"), ([], "an array"), (5, "a number"), (None, "null"), (True, "a boolean")],
)
def test_params_that_are_not_an_object_are_said_to_be_so(api, user, params, said):
    expected = f"params: must be an object, not {said}"
    response = api.post("/api/v1/jobs/", {"kind": "embed", "params": params}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["message"] == expected and error["details"]["field"] == "params"
    with pytest.raises(ApplicationError) as refused:  # the dashboard's way in
        job_submit_checked(user=user, kind="embed", params=params, from_form=True)
    assert refused.value.message == expected
    assert not Job.objects.exists()
