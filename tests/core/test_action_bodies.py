"""An action that takes no body (cancel, retry, activate, publish, approve/reject, a
DELETE) refuses one with keys by name: ignored, `{"force": true}` would answer 200 having
done something other than what was asked. No body, or `{}`, is the action as ever."""

import pytest

from embedhub.corpora.models import Corpus, Document
from embedhub.jobs.models import Job
from embedhub.registry.models import ModelVersion
from embedhub.vectors.models import VectorIndex
from tests.factories import CorpusFactory, DocumentFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db


def _unknown_key(response, key: str) -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["details"]["field"] == key
    assert error["details"]["fields"][key] == [
        "unknown field; allowed: none (this request takes no body)"
    ]


def test_cancel_and_retry_refuse_a_body_with_keys_and_leave_the_job_alone(api, user):
    job = Job.objects.create(owner=user, kind="embed", params={})
    _unknown_key(
        api.post(f"/api/v1/jobs/{job.pk}/cancel/", {"force": True}, format="json"), "force"
    )
    _unknown_key(api.post(f"/api/v1/jobs/{job.pk}/retry/", {"reset": 1}, format="json"), "reset")
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and not job.cancel_requested


@pytest.mark.parametrize("body", [None, {}])
def test_an_action_with_no_body_or_an_empty_object_still_acts(api, user, body):
    job = Job.objects.create(owner=user, kind="embed", params={})
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel/", body, format="json")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"


def test_a_form_posted_action_may_carry_only_its_csrf_token(api, user):
    job = Job.objects.create(owner=user, kind="embed", params={})
    url = f"/api/v1/jobs/{job.pk}/cancel/"
    _unknown_key(api.post(url, {"force": "1"}, format="multipart"), "force")
    assert api.post(url, {"csrfmiddlewaretoken": "x"}, format="multipart").status_code == 200


def test_a_body_that_is_not_an_object_is_refused(api, user):
    job = Job.objects.create(owner=user, kind="embed", params={})
    response = api.post(f"/api/v1/jobs/{job.pk}/cancel/", [1], format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"]["field"] == "non_field_errors"


def test_publish_activate_quarantine_and_deletes_refuse_a_body_with_keys(api, staff_api, user):
    version = ModelVersionFactory(owner=user, visibility=ModelVersion.Visibility.PRIVATE)
    url = f"/api/v1/model-versions/{version.pk}/publish/"
    _unknown_key(staff_api.post(url, {"visibility": "shared"}, format="json"), "visibility")
    version.refresh_from_db()
    assert version.visibility == ModelVersion.Visibility.PRIVATE

    corpus = CorpusFactory(owner=user)
    index = VectorIndex.objects.create(
        owner=user, corpus=corpus, model_version=version, dimension=8
    )
    body = {"rollback": True}
    _unknown_key(api.post(f"/api/v1/indexes/{index.pk}/activate/", body, format="json"), "rollback")
    _unknown_key(
        api.delete(f"/api/v1/indexes/{index.pk}/", {"force": True}, format="json"), "force"
    )
    assert VectorIndex.objects.filter(pk=index.pk).exists()

    document = DocumentFactory(corpus=corpus, quarantined=True)
    url = f"/api/v1/corpora/{corpus.pk}/quarantine/{document.pk}/approve/"
    _unknown_key(api.post(url, {"note": "ok"}, format="json"), "note")
    assert Document.objects.get(pk=document.pk).quarantined

    _unknown_key(
        api.delete(f"/api/v1/corpora/{corpus.pk}/", {"cascade": 1}, format="json"), "cascade"
    )
    assert Corpus.objects.filter(pk=corpus.pk).exists()
