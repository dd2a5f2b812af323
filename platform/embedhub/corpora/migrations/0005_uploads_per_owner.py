"""Stored uploads move from uploads/<uuid>/ to uploads/<owner id>/<uuid>/.

An ingest job now resolves its `path` inside its owner's folder only, so that a path seen
elsewhere cannot read (or, once imported, delete) another account's upload. The path in a
job's params stays <uuid>/<name>: moving each folder under the owner of the ingest jobs that
name it (the job its upload started, and its retries) keeps queued jobs and retries of failed
ones working. A folder no job names is a leftover of a refused upload and stays where it is,
unreachable, as does one that several accounts' jobs name.
"""

import re
from pathlib import Path

from django.conf import settings
from django.db import migrations

UPLOADS = "uploads"
LEGACY_FOLDER = re.compile(r"[0-9a-f]{32}")  # uuid4().hex, as upload_store named them


def _folders(apps):
    """(legacy folder name, owner id) for each folder the ingest jobs of one owner name. A
    folder named by several owners' jobs stays where it is, unreachable: before this
    migration any account could name any upload, so which of them uploaded it is unknown."""
    job_model = apps.get_model("jobs", "Job")
    owners: dict[str, set[int]] = {}
    for owner_id, params in job_model.objects.filter(kind="ingest").values_list(
        "owner_id", "params"
    ):
        path = params.get("path") if isinstance(params, dict) else None
        folder = str(path or "").split("/", 1)[0]
        if LEGACY_FOLDER.fullmatch(folder):
            owners.setdefault(folder, set()).add(owner_id)
    for folder, ids in owners.items():
        if len(ids) == 1:
            yield folder, next(iter(ids))


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
