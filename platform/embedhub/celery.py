"""Celery application. Tasks live in workers/tasks and are found by name, so the Django
project never imports the worker package (workers import embedhub, not the reverse)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embedhub.settings.base")

app = Celery("embedhub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ("workers.tasks.jobs", "workers.tasks.maintenance", "workers.tasks.schedules")
