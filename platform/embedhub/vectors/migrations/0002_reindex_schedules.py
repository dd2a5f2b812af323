"""Reindexing and retention schedules (django-celery-beat), so they are visible and
editable in the admin under Periodic Tasks.

The reindex examples are created disabled: copy one (or edit it), put your corpus id in its
kwargs and enable it. Retention runs daily and is enabled. Kwargs are documented in
workers/tasks/schedules.py.
"""

import json

from django.db import migrations

RETENTION = "Daily: drop retired indexes past retention"
EXAMPLES = [
    {
        "name": "Nightly: reindex corpus <id> to newest gated version (template)",
        "task": "embedhub.reindex_corpus",
        "kwargs": {"corpus_id": 0, "only_gated": True},
        "description": (
            "TEMPLATE, disabled. Every night at 03:00 UTC, rebuild the corpus's index with the "
            "newest ready version of its model that passed a reindex gate, then swap it in "
            "(the old index is kept for rollback). Set kwargs.corpus_id to your corpus, "
            "rename, enable. Other kwargs: model_name (switch model), model_version (exact "
            'version id), gate ({"query_set": <id>, "tolerance": 0.01}: swap only if nDCG@10 '
            "does not drop more than tolerance). Never queues a second reindex of a corpus."
        ),
        "hour": "3",
    },
    {
        "name": "Nightly: reindex every corpus behind its model's newest version (template)",
        "task": "embedhub.reindex_stale_corpora",
        "kwargs": {"only_gated": False},
        "description": (
            "TEMPLATE, disabled. Every night at 03:30 UTC, reindex each corpus whose active index "
            "was built by an older version than its model's newest ready version (each as the "
            "corpus's owner). kwargs: only_gated (true: only versions that passed a gate)."
        ),
        "hour": "3",
        "minute": "30",
    },
]


def _crontab(apps, *, minute="0", hour="*"):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=minute, hour=hour, day_of_week="*", day_of_month="*", month_of_year="*",
        timezone="UTC",
    )
    return schedule


def create(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for example in EXAMPLES:
        PeriodicTask.objects.update_or_create(
            name=example["name"],
            defaults={
                "task": example["task"],
                "crontab": _crontab(apps, minute=example.get("minute", "0"), hour=example["hour"]),
                "kwargs": json.dumps(example["kwargs"]),
                "description": example["description"],
                "enabled": False,
            },
        )
    PeriodicTask.objects.update_or_create(
        name=RETENTION,
        defaults={
            "task": "embedhub.drop_expired_indexes",
            "crontab": _crontab(apps, minute="15", hour="4"),
            "kwargs": json.dumps({}),
            "description": (
                "Every day at 04:15 UTC, drop the tables of retired indexes (replaced by a "
                "reindex) older than EMBEDHUB_INDEX_RETENTION_DAYS. Until then a retired index "
                "can be re-activated (POST /api/v1/indexes/<id>/activate/) to roll back."
            ),
            "enabled": True,
        },
    )


def remove(apps, schema_editor):
    names = [e["name"] for e in EXAMPLES] + [RETENTION]
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=names).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("vectors", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create, remove)]
