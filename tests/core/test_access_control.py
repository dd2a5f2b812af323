"""A second account probing the first one's objects gets 404 everywhere (ids don't leak),
anonymous requests are refused, and staff see everything."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from embedhub.audits.models import RobustnessAudit
from embedhub.evaluation.models import EvalRun, QuerySet
from embedhub.jobs.models import Job
from embedhub.vectors.services import index_create
from tests.factories import CorpusFactory, DocumentFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def owned(user):
    corpus = CorpusFactory(owner=user, name="private")
    DocumentFactory(corpus=corpus, external_id="secret-doc")
    version = ModelVersionFactory()
    index = index_create(owner=user, corpus=corpus, model_version=version, encoder="fake:8")
    query_set = QuerySet.objects.create(owner=user, corpus=corpus, name="qs")
    run = EvalRun.objects.create(
        owner=user, query_set=query_set, index=index, model_version=version
    )
    audit = RobustnessAudit.objects.create(
        owner=user, index=index, model_version=version, concept="c", message="m"
    )
    job = Job.objects.create(owner=user, kind="embed", params={}, corpus=corpus)
    return {
        "corpus": corpus,
        "index": index,
        "query_set": query_set,
        "run": run,
        "audit": audit,
        "job": job,
        "version": version,
    }


def _probes(o):
    c, i = o["corpus"].pk, o["index"].pk
    return [
        ("get", f"/api/v1/corpora/{c}/", None),
        ("delete", f"/api/v1/corpora/{c}/", None),
        ("get", f"/api/v1/corpora/{c}/documents/", None),
        ("get", f"/api/v1/corpora/{c}/documents/secret-doc/", None),
        ("get", f"/api/v1/indexes/{i}/", None),
        ("post", f"/api/v1/indexes/{i}/activate/", None),
        ("delete", f"/api/v1/indexes/{i}/", None),
        ("post", "/api/v1/search/", {"index": i, "query": "x"}),
        ("post", "/api/v1/search/", {"corpus": c, "query": "x"}),
        ("get", f"/api/v1/query-sets/{o['query_set'].pk}/", None),
        ("get", f"/api/v1/eval-runs/{o['run'].pk}/", None),
        ("get", f"/api/v1/audits/{o['audit'].pk}/", None),
        ("get", f"/api/v1/jobs/{o['job'].pk}/", None),
        ("post", f"/api/v1/jobs/{o['job'].pk}/cancel/", None),
        ("post", "/api/v1/jobs/", {"kind": "embed", "params": {"corpus": c}}),
        (
            "post",
            "/api/v1/jobs/",
            {"kind": "evaluate", "params": {"index": i, "query_set": o["query_set"].pk}},
        ),
    ]


def test_a_second_user_gets_404_on_every_object_of_the_first(other_api, owned):
    for method, url, body in _probes(owned):
        response = getattr(other_api, method)(url, body, format="json")
        assert response.status_code == 404, (method, url, response.status_code, response.content)
    upload = SimpleUploadedFile("c.jsonl", b'{"_id": "1", "text": "t"}\n')
    response = other_api.post(f"/api/v1/corpora/{owned['corpus'].pk}/upload/", {"file": upload})
    assert response.status_code == 404
    assert Job.objects.filter(owner__username="mallory").count() == 0


def test_lists_show_a_second_user_nothing_of_the_first(other_api, owned):
    for url in [
        "/api/v1/corpora/",
        "/api/v1/indexes/",
        "/api/v1/jobs/",
        "/api/v1/query-sets/",
        "/api/v1/eval-runs/",
        "/api/v1/audits/",
    ]:
        response = other_api.get(url)
        assert response.status_code == 200, url
        assert response.json()["count"] == 0, url


def test_the_owner_and_staff_can_read_them(api, staff_api, owned):
    for client in (api, staff_api):
        assert client.get(f"/api/v1/corpora/{owned['corpus'].pk}/").status_code == 200
        assert client.get(f"/api/v1/jobs/{owned['job'].pk}/").status_code == 200
        assert client.get(f"/api/v1/audits/{owned['audit'].pk}/").status_code == 200


def test_anonymous_requests_are_refused_and_pages_redirect_to_login(owned, client):
    anonymous = APIClient()
    for url in ["/api/v1/corpora/", "/api/v1/jobs/", f"/api/v1/jobs/{owned['job'].pk}/"]:
        assert anonymous.get(url).status_code in (401, 403)
    assert anonymous.post("/api/v1/search/", {"corpus": 1, "query": "x"}).status_code in (401, 403)
    for page in ["/", "/jobs/", "/corpora/", "/models/", "/evaluations/", "/audits/", "/search/"]:
        response = client.get(page)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], page


def test_registering_model_versions_is_staff_only(api, staff_api):
    assert api.post("/api/v1/model-versions/", {}, format="json").status_code == 403
    assert (
        staff_api.post(
            "/api/v1/model-versions/", {"source": "/nonexistent"}, format="json"
        ).status_code
        == 400
    )
