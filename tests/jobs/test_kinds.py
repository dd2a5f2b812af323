"""Each job kind is declared once, completely; a gap fails at start-up, not at first use."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework import serializers

from embedhub.jobs import kinds
from embedhub.jobs.kinds import JobKind, job_kind_get, job_kind_register, job_kinds_check
from embedhub.jobs.models import Job
from embedhub.jobs.params import ParamsSerializer
from tests.conftest import ROOT


@pytest.mark.parametrize("name", Job.Kind.values)
def test_every_job_kind_declares_every_part(name):
    kind = job_kind_get(name)
    assert kind.name == name
    assert kind.queue in kinds.QUEUES
    assert issubclass(kind.params, ParamsSerializer)  # unknown keys are refused
    assert callable(kind.prepare) and callable(kind.run)
    assert kind.description
    # Declared next to the code it runs: embedhub/<app>/jobs.py.
    assert kind.run.__module__.startswith("embedhub.")
    assert kinds.job_kind_problems(kind) == []


def test_the_registry_is_complete():
    assert job_kinds_check() == []


def test_model_kinds_go_to_the_gpu_queue_and_the_rest_to_cpu():
    queues = {name: job_kind_get(name).queue for name in Job.Kind.values}
    assert queues == {
        "ingest": "cpu",
        "evaluate": "cpu",
        "embed": "gpu",
        "finetune": "gpu",
        "reindex": "gpu",
        "audit": "gpu",
        "policy": "gpu",  # it may build a shadow index
    }


def test_a_kind_missing_a_part_is_refused_loudly():
    embed = job_kind_get("embed")
    with pytest.raises(ImproperlyConfigured, match="run is not callable"):
        job_kind_register(dataclasses.replace(embed, run=None))
    with pytest.raises(ImproperlyConfigured, match="params must be a DRF Serializer"):
        job_kind_register(dataclasses.replace(embed, params=dict))
    with pytest.raises(ImproperlyConfigured, match="queue"):
        job_kind_register(dataclasses.replace(embed, queue="tpu"))
    with pytest.raises(ImproperlyConfigured, match="not a Job.Kind"):
        job_kind_register(
            JobKind(
                name="nope",
                queue="cpu",
                params=serializers.Serializer,
                prepare=embed.prepare,
                run=embed.run,
                description="x",
            )
        )
    with pytest.raises(ImproperlyConfigured, match="declared twice"):
        job_kind_register(dataclasses.replace(embed, run=lambda **_: {}))
    assert job_kind_get("embed") is embed  # nothing was replaced


def test_an_undeclared_kind_is_listed_by_the_startup_check(monkeypatch):
    monkeypatch.delitem(kinds._KINDS, "audit")
    assert job_kinds_check() == [
        "Job.Kind 'audit' has no JobKind declaration in any embedhub.<app>.jobs module"
    ]


def test_startup_fails_when_a_kind_is_not_declared(tmp_path):
    # A real process start (django.setup), with the audits app's declaration hidden.
    code = "\n".join(
        [
            "import sys, types, importlib.machinery, django",
            "stub = types.ModuleType('embedhub.audits.jobs')",
            "stub.__spec__ = importlib.machinery.ModuleSpec(stub.__name__, None)",
            "sys.modules[stub.__name__] = stub",
            "django.setup()",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={
            "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
            "DJANGO_SETTINGS_MODULE": "embedhub.settings.test",
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "EMBEDHUB_AUTOSTART": "0",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "'audit' has no JobKind" in result.stderr
