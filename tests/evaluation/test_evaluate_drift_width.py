"""An evaluation whose QDC can never run (drift vectors of another width than the index's
vectors: an index built with a test encoder) is refused at submission, by the same check
that makes /search/ refuse it, instead of being accepted and failing in the worker."""

import numpy as np
import pytest

from embedhub.jobs.models import Job
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from tests.factories import ModelVersionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(user, corpus, model_version, make_query_set):
    add_documents(corpus, numbered_texts(10))
    index = build_index(owner=user, corpus=corpus, model_version=model_version)  # fake:64
    child = ModelVersionFactory(
        model=model_version.model, parent=model_version, drift=np.full(384, 0.01).tolist()
    )
    query_set = make_query_set(
        owner=user, corpus=corpus, queries={"q1": "document 3"}, qrels=[("q1", "d3", 1)]
    )
    return index, child, query_set


@pytest.mark.parametrize("compensation", ["qdc", "auto"])
def test_an_evaluate_job_with_qdc_on_a_narrower_index_is_refused_at_submission(
    api, setup, compensation
):
    index, child, query_set = setup
    params = {
        "index": index.pk,
        "query_set": query_set.pk,
        "model_version": child.pk,
        "compensation": compensation,
    }
    response = api.post("/api/v1/jobs/", {"kind": "evaluate", "params": params}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "incompatible_drift"
    assert error["details"]["field"] == "params.model_version"
    assert "64-dimensional vectors" in error["message"] and "384" in error["message"]
    assert not Job.objects.exists()
    body = {"index": index.pk, "query": "x", "model_version": child.pk, "compensation": "qdc"}
    search = api.post("/api/v1/search/", body, format="json")
    assert search.status_code == 400 and search.json()["error"]["code"] == "incompatible_drift"


def test_the_same_evaluation_without_compensation_is_accepted(api, setup):
    index, child, query_set = setup
    params = {
        "index": index.pk,
        "query_set": query_set.pk,
        "model_version": child.pk,
        "compensation": "none",
    }
    response = api.post("/api/v1/jobs/", {"kind": "evaluate", "params": params}, format="json")
    assert response.status_code == 202, response.content
