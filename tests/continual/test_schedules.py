"""Scheduled reindexing: the admin's PeriodicTasks, the tasks, and a real `celery beat`."""

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_execute
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors.models import VectorIndex
from tests.conftest import ROOT, wait_for_job, wait_until
from tests.factories import ModelVersionFactory
from tests.vectors.conftest import make_documents
from workers.tasks.schedules import drop_expired_indexes, reindex_corpus, reindex_stale_corpora


@pytest.mark.django_db
def test_admin_shows_disabled_reindex_templates_and_enabled_retention():
    tasks = {t.name: t for t in PeriodicTask.objects.filter(task__startswith="embedhub.")}
    template = tasks["Nightly: reindex corpus <id> to newest gated version (template)"]
    assert template.task == "embedhub.reindex_corpus" and template.enabled is False
    assert json.loads(template.kwargs) == {"corpus_id": 0, "only_gated": True}
    assert "corpus_id" in template.description and template.crontab.hour == "3"
    stale = tasks["Nightly: reindex every corpus behind its model's newest version (template)"]
    assert stale.task == "embedhub.reindex_stale_corpora" and stale.enabled is False
    retention = tasks["Daily: drop retired indexes past retention"]
    assert retention.task == "embedhub.drop_expired_indexes" and retention.enabled is True


def _embedded(user, corpus, version) -> VectorIndex:
    params = {"corpus": corpus.pk, "model_version": version.pk, "encoder": "fake:64"}
    job = job_submit_checked(user=user, kind="embed", params=params)[0]
    job_execute(job_id=job.pk, worker="test@inline")
    return VectorIndex.objects.get(pk=job.params["index"])


@pytest.mark.django_db(transaction=True)
def test_tasks_submit_one_reindex_per_corpus_and_retention_drops(user, corpus, settings):
    v1 = ModelVersionFactory()
    make_documents(corpus, 10)
    old = _embedded(user, corpus, v1)
    assert reindex_stale_corpora() == []  # nothing newer than v1 yet
    assert reindex_corpus(corpus_id=corpus.pk)["outcome"].endswith(f"(index {old.pk})")

    v2 = ModelVersionFactory(model=v1.model, parent=v1)
    (first,) = reindex_stale_corpora()
    assert first["outcome"] == "submitted"
    job = Job.objects.get(pk=first["job"])
    assert (job.owner, job.kind, job.params["model_version"]) == (user, "reindex", v2.pk)
    again = reindex_corpus(corpus_id=corpus.pk)  # while one is queued: no duplicate
    assert again["job"] is None and "already queued" in again["outcome"]
    assert reindex_corpus(corpus_id=corpus.pk, only_gated=True)["job"] is None  # none gated

    job_execute(job_id=job.pk, worker="test@inline")
    corpus.refresh_from_db()
    assert corpus.active_index_id == job.params["index"]
    assert drop_expired_indexes() == []  # retired just now: still in its rollback window
    VectorIndex.objects.filter(pk=old.pk).update(
        retired_at=timezone.now() - timedelta(days=settings.EMBEDHUB["INDEX_RETENTION_DAYS"] + 1)
    )
    assert drop_expired_indexes() == [old.pk]


@pytest.fixture
def start_beat(tmp_path, transactional_db):
    """A real `celery beat` with the database scheduler, bound to this test's DB and Redis."""
    from django.conf import settings
    from django.db import connection

    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
        "DJANGO_SETTINGS_MODULE": "embedhub.settings.test",
        "EMBEDHUB_DB_NAME": connection.settings_dict["NAME"],
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
    }
    procs = []

    def start():
        log = open(tmp_path / "beat.log", "w")  # noqa: SIM115 - closed at teardown
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "embedhub",
            "beat",
            "--loglevel=INFO",
            "-S",
            "django_celery_beat.schedulers:DatabaseScheduler",
            "--max-interval=1",
            f"--pidfile={tmp_path / 'beat.pid'}",
        ]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append((proc, log))
        return proc

    yield start
    for proc, log in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.django_db(transaction=True)
def test_beat_runs_a_periodic_reindex_and_the_active_index_swaps(
    user, corpus, start_worker, start_beat, tmp_path
):
    v1 = ModelVersionFactory()
    make_documents(corpus, 30)
    old = _embedded(user, corpus, v1)
    v2 = ModelVersionFactory(model=v1.model, parent=v1)
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name=f"Nightly: reindex corpus {corpus.pk} to newest version",
        task="embedhub.reindex_corpus",
        interval=every,
        kwargs=json.dumps({"corpus_id": corpus.pk}),
    )
    worker = start_worker("sched")
    beat = start_beat()

    def reindex_job():
        job = Job.objects.filter(corpus=corpus, kind="reindex").first()
        if beat.poll() is not None:
            raise AssertionError((tmp_path / "beat.log").read_text()[-3000:])
        return job

    job = wait_until(reindex_job, timeout=90, interval=0.2, what="beat to submit a reindex")
    job = wait_for_job(job.pk)
    assert job.status == "succeeded", job.error
    corpus.refresh_from_db()
    assert corpus.active_index_id == job.result["index"] != old.pk
    assert VectorIndex.objects.get(pk=job.result["index"]).model_version_id == v2.pk
    # Beat keeps firing every second; the corpus is up to date now, so nothing more is queued.
    log = tmp_path / "beat.log"
    fired = log.read_text().count("(embedhub.reindex_corpus)")
    wait_until(
        lambda: log.read_text().count("(embedhub.reindex_corpus)") >= fired + 2,
        timeout=60,
        interval=0.5,
        what="beat to fire again",
    )
    done = lambda: sum(  # noqa: E731
        "embedhub.reindex_corpus[" in line and "succeeded in" in line
        for line in worker.log_path.read_text().splitlines()
    )
    wait_until(lambda: done() >= 3, timeout=30, what="the worker to run the later firings")
    assert Job.objects.filter(corpus=corpus, kind="reindex").count() == 1
