"""A job's params, result, error and events can name server files (a training set under
MEDIA_ROOT, a fine-tune's weights under ARTIFACT_ROOT): the jobs API and the dashboard's
job page show them whole to staff only, and to everyone else relative to the storage
root. The rows keep the real paths, which the workers read; what a user gave (an
upload's name, its id/name) stays as it was."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from embedhub.jobs.models import Job
from embedhub.jobs.services import job_event_add

pytestmark = pytest.mark.django_db

SERVER_ROOTS = (str(settings.ARTIFACT_ROOT), str(settings.MEDIA_ROOT), str(settings.BASE_DIR))


@pytest.fixture
def finetune(user):
    pairs = f"{settings.MEDIA_ROOT}/training-sets/{user.pk}/abc.jsonl"
    weights = f"{settings.ARTIFACT_ROOT}/models/minilm/v2"
    job = Job.objects.create(
        owner=user,
        kind=Job.Kind.FINETUNE,
        status=Job.Status.FAILED,
        params={"parent": 1, "pairs_path": pairs, "config": {}},
        result={"model_version": 2, "artifact_path": weights},
        error=f"FileNotFoundError: [Errno 2] No such file or directory: '{weights}/config.json'",
    )
    job_event_add(job=job, kind="failed", message=job.error, data={"result": job.result})
    return job


def _leaks(text: str) -> list[str]:
    return [root for root in SERVER_ROOTS if root in text]


@pytest.mark.parametrize(
    "url", ["/api/v1/jobs/", "/api/v1/jobs/{id}/", "/api/v1/jobs/{id}/events/"]
)
def test_the_jobs_api_shows_a_non_staff_owner_no_server_path(api, finetune, url):
    response = api.get(url.format(id=finetune.pk))
    assert response.status_code == 200
    text = json.dumps(response.json())
    assert _leaks(text) == []
    assert "models/minilm/v2" in text


def test_the_job_detail_shows_paths_relative_to_their_storage_root(api, finetune, user):
    body = api.get(f"/api/v1/jobs/{finetune.pk}/").json()
    assert body["params"]["pairs_path"] == f"training-sets/{user.pk}/abc.jsonl"
    assert body["result"]["artifact_path"] == "models/minilm/v2"
    assert body["error"].endswith("No such file or directory: 'models/minilm/v2/config.json'")
    finetune.refresh_from_db()  # what the worker reads is untouched
    assert finetune.params["pairs_path"].startswith(str(settings.MEDIA_ROOT))


def test_staff_see_a_jobs_paths_whole(staff_api, finetune):
    body = staff_api.get(f"/api/v1/jobs/{finetune.pk}/").json()
    assert body["params"] == finetune.params and body["result"] == finetune.result
    assert body["error"] == finetune.error


def test_an_upload_answers_with_its_own_name_and_id_and_no_server_path(api):
    response = api.post(
        "/api/v1/corpora/upload/",
        {"file": SimpleUploadedFile("My Docs.jsonl", b'{"_id": "1", "text": "a"}\n'), "name": "c"},
        format="multipart",
    )
    assert response.status_code == 202, response.content
    params = response.json()["params"]
    assert params["filename"] == "My Docs.jsonl" and params["path"].endswith("/My_Docs.jsonl")
    assert _leaks(response.content.decode()) == []


def test_the_dashboard_job_page_shows_a_non_staff_owner_no_server_path(client, user, finetune):
    client.force_login(user)
    page = client.get(f"/jobs/{finetune.pk}/").content.decode()
    assert _leaks(page) == []
    assert f"training-sets/{user.pk}/abc.jsonl" in page and "models/minilm/v2" in page


def test_the_dashboard_job_page_shows_staff_the_paths_whole(client, staff_user, finetune):
    client.force_login(staff_user)
    page = client.get(f"/jobs/{finetune.pk}/").content.decode()
    assert finetune.params["pairs_path"] in page
