"""Periodic housekeeping tasks, scheduled with django-celery-beat (see the admin)."""

from celery import shared_task
from celery.signals import beat_init

from embedhub.jobs.services import jobs_reap, reaper_schedule_sync


@shared_task(name="embedhub.reap_jobs")
def reap_jobs() -> dict:
    """Re-queue jobs whose worker died and re-send jobs whose broker message was lost
    (workers running a job reap too: jobs_reap_if_due)."""
    return jobs_reap()


@beat_init.connect
def _reaper_schedule_on_beat_start(**_) -> None:
    reaper_schedule_sync()
