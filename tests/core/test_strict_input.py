"""An undeclared key in a request body is refused by name (400), never dropped: a misspelt
option or a read-only field would otherwise answer 200 having done something else."""

import io

import pytest

from embedhub.corpora.models import Corpus
from embedhub.evaluation.models import QuerySet
from embedhub.jobs.models import Job
from embedhub.vectors.models import ServingPolicy
from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db


def _unknown(response, key: str) -> str:
    assert response.status_code == 400, response.content
    return response.json()["error"]["details"]["fields"][key][0]


def test_a_misspelt_search_option_is_refused_by_name(api, user):
    corpus = CorpusFactory(owner=user)
    body = {"corpus": corpus.pk, "query": "x", "compensaton": "qdc"}
    message = _unknown(api.post("/api/v1/search/", body, format="json"), "compensaton")
    assert "unknown field" in message and "compensation" in message


def test_a_read_only_policy_field_is_refused_and_nothing_changes(api, user):
    corpus = CorpusFactory(owner=user)
    url = f"/api/v1/corpora/{corpus.pk}/policy/"
    body = {"compensation": "adapter", "tolerance": 0.2}
    assert "allowed: allow_reindex" in _unknown(api.patch(url, body, format="json"), "compensation")
    assert not ServingPolicy.objects.filter(corpus=corpus, tolerance=0.2).exists()
    assert api.get(url).json()["tolerance"] == 0.01


def test_corpus_create_and_screening_refuse_undeclared_keys(api, user):
    _unknown(api.post("/api/v1/corpora/", {"name": "a", "owner": 2}, format="json"), "owner")
    assert not Corpus.objects.filter(name="a").exists()
    corpus = CorpusFactory(owner=user)
    url = f"/api/v1/corpora/{corpus.pk}/screening/"
    _unknown(api.patch(url, {"enabled": True, "fp_rate": 0.1}, format="json"), "fp_rate")


def test_a_job_submission_with_an_undeclared_top_level_key_is_refused(api, user):
    corpus = CorpusFactory(owner=user)
    body = {"kind": "embed", "params": {"corpus": corpus.pk}, "priority": 9}
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"]["field"] == "priority"
    assert not Job.objects.exists()


def test_a_multipart_upload_with_an_undeclared_field_is_refused(api, user):
    corpus = CorpusFactory(owner=user)
    queries = io.BytesIO(b'{"_id": "q1", "text": "a"}\n')
    queries.name = "queries.jsonl"
    qrels = io.BytesIO(b"q1\td1\t1\n")
    qrels.name = "qrels.tsv"
    body = {"corpus": corpus.pk, "name": "t", "queries": queries, "qrels": qrels, "skip": "1"}
    _unknown(api.post("/api/v1/query-sets/", body, format="multipart"), "skip")
    assert not QuerySet.objects.exists()


def test_the_browsable_api_form_csrf_token_is_not_an_unknown_field(user):
    from rest_framework.test import APIClient

    browser = APIClient()
    browser.force_login(user)
    body = {"name": "from-form", "csrfmiddlewaretoken": "x"}
    response = browser.post("/api/v1/corpora/", body, format="multipart")
    assert response.status_code == 201, response.content
    assert Corpus.objects.filter(owner=user, name="from-form").exists()


def test_a_csrf_token_inside_job_params_is_an_unknown_param(api, user):
    corpus = CorpusFactory(owner=user)
    body = {"kind": "embed", "params": {"corpus": corpus.pk, "csrfmiddlewaretoken": "x"}}
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"]["field"] == "params.csrfmiddlewaretoken"
    assert not Job.objects.exists()
