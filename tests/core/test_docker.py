"""Docker cannot run here, so the image's entrypoint and compose env are checked directly."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


@pytest.mark.parametrize("role", ["web", "worker-gpu", "worker-cpu", "beat"])
def test_entrypoint_refuses_to_start_a_role_without_its_settings(role):
    out = subprocess.run(
        ["sh", str(ENTRYPOINT), role], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert out.returncode == 64
    assert "DATABASE_URL must be set" in out.stderr


def test_entrypoint_names_the_missing_secret_key():
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": "postgres://x@db/x",
        "CELERY_BROKER_URL": "redis://r",
    }
    out = subprocess.run(["sh", str(ENTRYPOINT), "beat"], capture_output=True, text=True, env=env)
    assert out.returncode == 64 and "SECRET_KEY must be set" in out.stderr


def test_entrypoint_runs_any_other_command():
    out = subprocess.run(["sh", str(ENTRYPOINT), "echo", "hello"], capture_output=True, text=True)
    assert out.stdout.strip() == "hello"


def test_compose_sets_only_variables_the_settings_read():
    compose = (ROOT / "docker" / "compose.yaml").read_text()
    app_env = compose.split("environment: &env", 1)[1].split("volumes:", 1)[0]
    names = re.findall(r"^\s+([A-Z_]+):", app_env, flags=re.M)
    settings_src = (ROOT / "platform" / "embedhub" / "settings" / "base.py").read_text()
    assert names, "compose lists no environment"
    for name in names:
        assert f'"{name}"' in settings_src, f"{name} is set in compose but never read"
    assert "pgvector/pgvector:pg18" in compose
    assert "driver: nvidia" in compose


def test_settings_refuse_production_without_a_secret_key():
    code = "import embedhub.settings.base"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
        "DEBUG": "0",
        "DATABASE_URL": "postgres://x@db/x",
        "CELERY_BROKER_URL": "redis://r",
    }
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in out.stderr
