"""Stored uploads move from uploads/<uuid>/ to uploads/<owner id>/<uuid>/.

An ingest job now resolves its `path` inside its owner's folder only, so that a path seen
elsewhere cannot read (or, once imported, delete) another account's upload. The path in a
job's params stays <uuid>/<name>: moving each folder under the owner of the first ingest
job that names it (the job its upload started) keeps queued jobs and retries of failed ones
working. A folder no job names is a leftover of a refused upload and stays where it is,
unreachable.
"""

import re
from pathlib import Path

from django.conf import settings
from django.db import migrations

UPLOADS = "uploads"
LEGACY_FOLDER = re.compile(r"[0-9a-f]{32}")  # uuid4().hex, as upload_store named them


def _folders(apps):
    """(legacy folder name, owner id) for each folder an ingest job names, first job first."""
    job_model = apps.get_model("jobs", "Job")
    seen = set()
    for owner_id, params in (
        job_model.objects.filter(kind="ingest").order_by("pk").values_list("owner_id", "params")
    ):
        path = params.get("path") if isinstance(params, dict) else None
        folder = str(path or "").split("/", 1)[0]
        if LEGACY_FOLDER.fullmatch(folder) and folder not in seen:
            seen.add(folder)
            yield folder, owner_id


def forwards(apps, schema_editor):
    root = Path(settings.MEDIA_ROOT) / UPLOADS
    for folder, owner_id in _folders(apps):
        source, target = root / folder, root / str(owner_id) / folder
        if source.is_dir() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)


def backwards(apps, schema_editor):
    root = Path(settings.MEDIA_ROOT) / UPLOADS
    for folder, owner_id in _folders(apps):
        source, target = root / str(owner_id) / folder, root / folder
        if source.is_dir() and not target.exists():
            source.rename(target)


class Migration(migrations.Migration):
    dependencies = [
        ("corpora", "0004_quarantinedecision_content_hash"),
        ("jobs", "0005_kind_policy"),
    ]

    operations = [migrations.RunPython(forwards, backwards, elidable=True)]
