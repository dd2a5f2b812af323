"""Stored uploads belong to their uploader: an ingest job's `path` resolves only inside its
own owner's upload folder, and an ingest only ever removes its own upload."""

from __future__ import annotations

import importlib
import uuid
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from embedhub.core.errors import NotFound
from embedhub.corpora.services import upload_discard, upload_folder, upload_path
from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_execute
from tests.factories import CorpusFactory

MIGRATION = importlib.import_module("embedhub.corpora.migrations.0005_uploads_per_owner")
DOCS = b'{"_id": "d1", "text": "alpha beta"}\n'


def _upload(client, name: str = "docs.jsonl", corpus_name: str = "mine") -> Job:
    response = client.post(
        "/api/v1/corpora/upload/",
        {"file": SimpleUploadedFile(name, DOCS), "name": corpus_name},
        format="multipart",
    )
    assert response.status_code == 202, response.content
    return Job.objects.get(pk=response.json()["id"])


def _ingest(client, *, corpus, path: str):
    params = {"corpus": corpus.pk, "path": path}
    return client.post("/api/v1/jobs/", {"kind": "ingest", "params": params}, format="json")


@pytest.mark.django_db
def test_an_upload_is_stored_in_its_owners_folder_and_named_relative_to_it(api, user):
    job = _upload(api)
    relative = job.params["path"]
    assert relative.endswith("/docs.jsonl") and relative.count("/") == 1
    stored = upload_folder(owner_id=user.pk) / relative
    assert stored.read_bytes() == DOCS
    assert upload_path(owner_id=user.pk, relative=relative) == stored.resolve()


@pytest.mark.django_db
def test_an_ingest_job_naming_another_accounts_upload_is_a_404_naming_params_path(
    api, other_api, user, other_user
):
    path = _upload(api).params["path"]
    theirs = CorpusFactory(owner=other_user)
    response = _ingest(other_api, corpus=theirs, path=path)
    assert response.status_code == 404, response.content
    error = response.json()["error"]
    assert error["code"] == "not_found" and error["details"]["field"] == "params.path"
    assert error["message"].startswith("params.path: ") and str(settings.MEDIA_ROOT) not in str(
        error
    )
    # The same answer as for a path nobody ever uploaded: nothing tells the two apart.
    never = _ingest(other_api, corpus=theirs, path=f"{uuid.uuid4().hex}/docs.jsonl")
    assert never.status_code == 404 and never.json()["error"]["code"] == "not_found"
    assert Job.objects.filter(owner=other_user).count() == 0
    assert (upload_folder(owner_id=user.pk) / path).is_file()


@pytest.mark.django_db
def test_an_ingest_job_naming_ones_own_upload_is_accepted(api, user):
    path = _upload(api).params["path"]
    response = _ingest(api, corpus=CorpusFactory(owner=user), path=path)
    assert response.status_code == 202, response.content
    assert response.json()["params"]["path"] == path


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["through the owner's folder", "outside every folder"])
def test_a_path_leaving_ones_own_upload_folder_is_a_400_naming_params_path(
    api, other_api, user, other_user, how
):
    path = _upload(api).params["path"]
    sneaky = (
        f"../{user.pk}/{path}" if how == "through the owner's folder" else "../../../etc/passwd"
    )
    response = _ingest(other_api, corpus=CorpusFactory(owner=other_user), path=sneaky)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"]["field"] == "params.path"


@pytest.mark.django_db
def test_removing_an_imported_upload_never_touches_the_folder_above_it(user, other_user):
    mine, theirs = upload_folder(owner_id=user.pk), upload_folder(owner_id=other_user.pk)
    for folder in (mine / "a", mine / "b", theirs / "a"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "docs.jsonl").write_bytes(DOCS)
    (mine / "loose.jsonl").write_bytes(DOCS)
    upload_discard(owner_id=user.pk, path=upload_path(owner_id=user.pk, relative="a/docs.jsonl"))
    upload_discard(owner_id=user.pk, path=upload_path(owner_id=user.pk, relative="loose.jsonl"))
    assert not (mine / "a").exists() and not (mine / "loose.jsonl").exists()
    assert (mine / "b" / "docs.jsonl").is_file() and (theirs / "a" / "docs.jsonl").is_file()


@pytest.mark.django_db(transaction=True)
def test_an_ingest_removes_its_own_upload_and_a_retry_without_it_names_params_path(
    api, user, other_user
):
    job = _upload(api)
    bystander = upload_folder(owner_id=other_user.pk) / job.params["path"]
    bystander.parent.mkdir(parents=True)
    bystander.write_bytes(DOCS)  # another account's upload under the very same name
    assert job_execute(job_id=job.pk, worker="test@inline") == "succeeded"
    assert not (upload_folder(owner_id=user.pk) / job.params["path"]).parent.exists()
    assert bystander.is_file()

    # A second ingest of the same (now removed) upload fails with a message, not a server path.
    again = Job.objects.create(
        owner=user, kind="ingest", params=job.params, corpus=job.corpus, queue="cpu"
    )
    assert job_execute(job_id=again.pk, worker="test@inline") == "failed"
    again.refresh_from_db()
    assert "upload the file again" in again.error and job.params["path"] in again.error
    assert str(settings.MEDIA_ROOT) not in again.error


@pytest.mark.django_db
def test_the_migration_moves_each_upload_under_the_one_owner_whose_jobs_name_it(user, other_user):
    root = Path(settings.MEDIA_ROOT) / "uploads"
    mine, shared, orphan = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    for folder in (mine, shared, orphan):
        (root / folder).mkdir(parents=True)
        (root / folder / "docs.jsonl").write_bytes(DOCS)
    for owner, folder in ((user, mine), (user, mine), (user, shared), (other_user, shared)):
        Job.objects.create(owner=owner, kind="ingest", params={"path": f"{folder}/docs.jsonl"})

    MIGRATION.forwards(apps, None)
    MIGRATION.forwards(apps, None)  # a second run changes nothing

    assert upload_path(owner_id=user.pk, relative=f"{mine}/docs.jsonl").read_bytes() == DOCS
    with pytest.raises(NotFound):
        upload_path(owner_id=other_user.pk, relative=f"{mine}/docs.jsonl")
    # Named by two accounts' jobs (anyone could name any upload before): whose is unknown.
    for owner in (user, other_user):
        with pytest.raises(NotFound):
            upload_path(owner_id=owner.pk, relative=f"{shared}/docs.jsonl")
    assert not (root / mine).exists()
    assert (root / shared / "docs.jsonl").is_file() and (root / orphan / "docs.jsonl").is_file()
    MIGRATION.backwards(apps, None)
    assert (root / mine / "docs.jsonl").is_file()


@pytest.mark.django_db
def test_an_ingest_path_too_long_for_the_file_system_is_a_4xx_naming_params_path(api, user):
    corpus = CorpusFactory(owner=user)
    response = _ingest(api, corpus=corpus, path="a" * 300 + "/x.jsonl")
    assert response.status_code in (400, 404), response.content
    assert response.json()["error"]["details"]["field"] == "params.path"


@pytest.mark.django_db(transaction=True)
def test_a_dispatch_that_fails_after_the_commit_keeps_the_jobs_upload(api, user, monkeypatch):
    # The job and its corpus are committed: the file is what a retry of the job reads.
    from embedhub.jobs import services as job_services

    def broken_dispatch(*, job_id: int) -> None:
        raise RuntimeError("the database went away after the commit")

    monkeypatch.setattr(job_services, "job_dispatch", broken_dispatch)
    with pytest.raises(RuntimeError):
        api.post(
            "/api/v1/corpora/upload/",
            {"file": SimpleUploadedFile("docs.jsonl", DOCS), "name": "kept"},
            format="multipart",
        )
    job = Job.objects.get(corpus__name="kept")
    assert (upload_folder(owner_id=user.pk) / job.params["path"]).read_bytes() == DOCS
