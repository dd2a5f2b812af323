"""Shared fixtures: the real embedded Postgres/Redis (started by settings) and real
Celery worker processes bound to this test run's database and Redis db."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class WorkerProcess:
    """A real `celery worker` subprocess (solo pool: the job runs in the process we kill)."""

    def __init__(self, *, name: str, queues: str, log_dir: Path):
        from django.conf import settings
        from django.db import connection

        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
            "DJANGO_SETTINGS_MODULE": "embedhub.settings.test",
            "EMBEDHUB_DB_NAME": connection.settings_dict["NAME"],
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "EMBEDHUB_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
            "ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        }
        self.log_path = log_dir / f"worker-{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - kept open for the process lifetime
        cmd = [sys.executable, "-m", "celery", "-A", "embedhub", "worker", "-Q", queues]
        cmd += ["--pool=solo", "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
        cmd += ["--loglevel=INFO"]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.name = name
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            if "ready." in self.log_path.read_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, no ack, like a lost machine."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def freeze(self) -> None:
        """SIGSTOP: the process and its connections stay, but it does nothing (a hung VM)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def start_worker(tmp_path_factory, transactional_db):
    """Start real worker processes for this test; all are stopped afterwards."""
    workers: list[WorkerProcess] = []
    log_dir = tmp_path_factory.mktemp("workers")

    def start(name: str = "w1", queues: str = "cpu,gpu") -> WorkerProcess:
        worker = WorkerProcess(name=f"{name}-{len(workers)}", queues=queues, log_dir=log_dir)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def worker(start_worker):
    return start_worker()


def wait_for_job(job_id: int, *, statuses=("succeeded", "failed", "cancelled"), timeout=120.0):
    """Poll Postgres (the truth) until the job reaches one of `statuses`."""
    from embedhub.jobs.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    job = Job.objects.get(pk=job_id)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s: {job.error}")


def wait_until(predicate, *, timeout: float = 60.0, interval: float = 0.1, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


@pytest.fixture
def user(db):
    from tests.factories import UserFactory

    return UserFactory(username="alice")


@pytest.fixture
def other_user(db):
    from tests.factories import UserFactory

    return UserFactory(username="mallory")


@pytest.fixture
def staff_user(db):
    from tests.factories import UserFactory

    return UserFactory(username="admin", is_staff=True, is_superuser=True)


def _api_client(user):
    from rest_framework.test import APIClient  # lazy: workers/ml tests run without Django

    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def api(user):
    return _api_client(user)


@pytest.fixture
def other_api(other_user):
    return _api_client(other_user)


@pytest.fixture
def staff_api(staff_user):
    return _api_client(staff_user)
