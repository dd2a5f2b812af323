"""Schedule the job reaper with django-celery-beat, so it shows (and can be tuned) in the admin."""

import json

from django.conf import settings
from django.db import migrations

NAME = "EmbedHub: reap stale jobs"


def create(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    seconds = int(settings.EMBEDHUB["REAPER_INTERVAL_SECONDS"])
    every, _ = IntervalSchedule.objects.get_or_create(every=seconds, period="seconds")
    PeriodicTask.objects.update_or_create(
        name=NAME,
        defaults={
            "task": "embedhub.reap_jobs",
            "interval": every,
            "args": json.dumps([]),
            "description": "Re-queues running jobs whose heartbeat went stale (dead worker) and "
            "re-sends queued jobs whose broker message was lost. Keep it enabled.",
        },
    )


def remove(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create, remove)]
