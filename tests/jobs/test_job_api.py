import pytest

from embedhub.jobs.models import Job
from tests.factories import CorpusFactory
from tests.vectors.conftest import make_documents


@pytest.fixture
def corpus(user):
    corpus = CorpusFactory(owner=user, name="api")
    make_documents(corpus, 5)
    return corpus


@pytest.mark.django_db(transaction=True)
def test_submit_answers_202_with_location_and_idempotency_key_never_makes_a_second_job(
    api, corpus, model_version
):
    body = {
        "kind": "embed",
        "params": {"corpus": corpus.pk, "model_version": model_version.pk, "encoder": "fake:8"},
    }
    first = api.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 202, first.content
    assert first["Location"] == f"/api/v1/jobs/{first.json()['id']}/"
    again = api.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_bad_params_are_rejected_with_one_error_shape_and_no_job(api, corpus):
    response = api.post(
        "/api/v1/jobs/", {"kind": "embed", "params": {"corpus": 999999}}, format="json"
    )
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"code", "message", "details"}
    assert "corpus 999999" in response.json()["error"]["message"]
    response = api.post("/api/v1/jobs/", {"kind": "nonsense"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "kind"
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_another_users_job_is_a_404_for_read_cancel_and_retry(api, other_api, user):
    job = Job.objects.create(owner=user, kind="embed", params={})
    for method, url in [
        ("get", f"/api/v1/jobs/{job.pk}/"),
        ("post", f"/api/v1/jobs/{job.pk}/cancel/"),
        ("post", f"/api/v1/jobs/{job.pk}/retry/"),
        ("get", f"/api/v1/jobs/{job.pk}/events/"),
    ]:
        assert getattr(other_api, method)(url).status_code == 404
    assert api.get(f"/api/v1/jobs/{job.pk}/").status_code == 200


@pytest.mark.django_db
def test_cancelling_a_queued_job_stops_it_at_once_and_a_finished_job_cannot_be_cancelled(api, user):
    job = Job.objects.create(owner=user, kind="embed", params={})
    assert api.post(f"/api/v1/jobs/{job.pk}/cancel/").json()["status"] == "cancelled"
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_finished"
