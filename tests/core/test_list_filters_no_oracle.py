"""A list filter naming another account's object answers exactly as one naming a missing
object does (same status, same message): filters are no oracle for other accounts' ids,
private model versions included. The caller's own ids, and staff, filter as before. Every
id filter of every list (the audits' comparison too) is one of these: none is silently
ignored, none answers an empty 200 for an id the caller may not see."""

import pytest

from embedhub.audits.models import RobustnessAudit
from embedhub.evaluation.models import EvalRun, QuerySet
from embedhub.jobs.models import Job
from embedhub.registry.models import ModelVersion
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.services import index_create
from tests.factories import CorpusFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db

MISSING = 987654


@pytest.fixture
def alices(user):
    corpus = CorpusFactory(owner=user, name="private")
    shared = ModelVersionFactory()
    private = ModelVersionFactory(
        owner=user, parent=shared, visibility=ModelVersion.Visibility.PRIVATE
    )
    index = index_create(owner=user, corpus=corpus, model_version=private, encoder="fake:8")
    query_set = QuerySet.objects.create(owner=user, corpus=corpus, name="qs")
    EvalRun.objects.create(owner=user, query_set=query_set, index=index, model_version=private)
    RobustnessAudit.objects.create(
        owner=user, index=index, model_version=private, concept="c", message="m"
    )
    parent = Job.objects.create(owner=user, kind="embed", params={}, corpus=corpus)
    Job.objects.create(owner=user, kind="embed", params={}, corpus=corpus, parent=parent)
    ModelVersionFactory(owner=user, parent=private, visibility=ModelVersion.Visibility.PRIVATE)
    return {
        "corpus": corpus.pk,
        "index": index.pk,
        "query_set": query_set.pk,
        "model_version": private.pk,
        "parent": parent.pk,
        "version_parent": private.pk,  # its one child is Alice's too
    }


FILTERS = [
    ("/api/v1/jobs/", "corpus"),
    ("/api/v1/jobs/", "parent"),
    ("/api/v1/indexes/", "corpus"),
    ("/api/v1/indexes/", "model_version"),
    ("/api/v1/eval-runs/", "query_set"),
    ("/api/v1/eval-runs/", "index"),
    ("/api/v1/eval-runs/", "model_version"),
    ("/api/v1/audits/", "index"),
    ("/api/v1/audits/", "model_version"),
    ("/api/v1/query-sets/", "corpus"),
    ("/api/v1/model-versions/", "parent"),
]


def _id(alices: dict, url: str, param: str) -> int:
    return alices["version_parent" if url == "/api/v1/model-versions/" else param]


def _answer(response, value: int) -> tuple[int, str]:
    return response.status_code, response.content.decode().replace(str(value), "<id>")


@pytest.mark.parametrize(("url", "param"), FILTERS)
def test_a_filter_by_another_accounts_id_answers_as_a_missing_id_does(
    api, other_api, alices, url, param
):
    foreign = _id(alices, url, param)
    answer = _answer(other_api.get(f"{url}?{param}={foreign}"), foreign)
    missing = _answer(other_api.get(f"{url}?{param}={MISSING}"), MISSING)
    assert answer == missing
    status, body = answer
    assert status == 400 and f"{param}: <id> not found" in body
    mine = api.get(f"{url}?{param}={foreign}")
    assert mine.status_code == 200 and mine.json()["count"] == 1, mine.content


@pytest.mark.parametrize(("url", "param"), FILTERS)
def test_staff_filter_by_any_accounts_id(staff_api, alices, url, param):
    response = staff_api.get(f"{url}?{param}={_id(alices, url, param)}")
    assert response.status_code == 200 and response.json()["count"] == 1


def test_model_version_lists_filter_by_name_alike_for_hidden_and_missing_models(
    user, other_api, staff_api
):
    hidden = ModelVersionFactory(
        model__name="alices-own-model", owner=user, visibility=ModelVersion.Visibility.PRIVATE
    )
    for name in ("alices-own-model", "no-such-model"):
        response = other_api.get(f"/api/v1/model-versions/?model={name}")
        assert response.status_code == 200 and response.json()["count"] == 0
    seen = staff_api.get("/api/v1/model-versions/?model=alices-own-model").json()
    assert [v["id"] for v in seen["results"]] == [hidden.pk]


@pytest.mark.parametrize("url", ["/api/v1/query-sets/", "/api/v1/jobs/", "/api/v1/indexes/"])
def test_a_corpus_filter_that_is_no_id_is_refused_in_the_same_words(api, url):
    response = api.get(f"{url}?corpus=abc")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "corpus: abc not found"


def test_the_audit_comparison_filters_by_an_index_the_caller_may_see(api, other_api, user, alices):
    index = VectorIndex.objects.get(pk=alices["index"])
    other = index_create(
        owner=user, corpus=index.corpus, model_version=index.model_version, encoder="fake:16"
    )
    for target in (index, other):
        RobustnessAudit.objects.create(
            owner=user,
            index=target,
            model_version=target.model_version,
            concept="c",
            message="m",
            state=RobustnessAudit.State.COMPLETE,
        )
    url = "/api/v1/audits/comparison/"
    # One row per (concept, corpus, version): the latest audit's, unless ?index= says whose.
    assert [row["index"] for row in api.get(url).json()] == [other.pk]
    assert [row["index"] for row in api.get(f"{url}?index={index.pk}").json()] == [index.pk]
    foreign = _answer(other_api.get(f"{url}?index={index.pk}"), index.pk)
    assert foreign == _answer(other_api.get(f"{url}?index={MISSING}"), MISSING)
    status, body = foreign
    assert status == 400 and "index: <id> not found" in body


def test_the_schema_documents_the_filters_that_were_read_by_hand_or_ignored():
    from drf_spectacular.generators import SchemaGenerator

    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]

    def documented(path: str) -> dict[str, str]:
        parameters = paths[path]["get"]["parameters"]
        return {p["name"]: p["schema"]["type"] for p in parameters if p["in"] == "query"}

    assert documented("/api/v1/query-sets/")["corpus"] == "integer"
    versions = documented("/api/v1/model-versions/")
    assert (versions["parent"], versions["model"], versions["status"]) == (
        "integer",
        "string",
        "string",
    )
    comparison = documented("/api/v1/audits/comparison/")
    assert comparison == {"concept": "string", "index": "integer"}
