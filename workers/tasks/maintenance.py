"""Periodic housekeeping tasks, scheduled with django-celery-beat (see the admin)."""

from celery import shared_task
from celery.signals import beat_init

from embedhub.jobs.services import jobs_reap_exclusive, reaper_schedule_sync


@shared_task(name="embedhub.reap_jobs")
def reap_jobs() -> dict | None:
    """Re-queue jobs whose worker died and re-send jobs whose broker message was lost
    (None: another reaper was at it; running jobs' heartbeat threads reap too)."""
    return jobs_reap_exclusive()


@beat_init.connect
def _reaper_schedule_on_beat_start(**_) -> None:
    reaper_schedule_sync()
