"""Set up Django for a benchmark against its own database (never the dev or test DB).

Usage at the top of a benchmark script:
    from benchmarks._django import setup; setup("embedhub_bench")
"""

from __future__ import annotations

import os
import platform as _stdlib_platform  # noqa: F401 - imported before sys.path gains platform/
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup(db_name: str = "embedhub_bench") -> None:
    for path in (str(ROOT), str(ROOT / "platform")):
        if path not in sys.path:
            sys.path.append(path)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embedhub.settings.base")
    os.environ.setdefault("DEBUG", "1")
    os.environ["EMBEDHUB_DB_NAME"] = db_name
    # The overhead and search benchmarks embed with the fake encoder, which production refuses.
    os.environ.setdefault("EMBEDHUB_ALLOW_FAKE_ENCODER", "1")
    # Jobs run in-process; their broker messages go to Redis db 255, which no worker reads
    # (test runs use dbs 1-250).
    if not os.environ.get("CELERY_BROKER_URL"):
        from embedhub.core import embedded

        embedded.services_start(ROOT / "var")
        os.environ["CELERY_BROKER_URL"] = embedded.redis_url(ROOT / "var", db=255)
    _create_database(db_name)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def _create_database(db_name: str) -> None:
    import psycopg

    from embedhub.core import embedded
    from embedhub.settings.base import DATABASE_URL

    del embedded  # settings import above already started the embedded services if wanted
    admin = DATABASE_URL.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db_name]).fetchone():
            conn.execute(f'CREATE DATABASE "{db_name}"')


def bench_user(username: str = "bench"):
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__} threads {torch.get_num_threads()}, {gpu}"
