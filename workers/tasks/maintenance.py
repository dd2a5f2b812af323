"""Periodic housekeeping tasks, scheduled with django-celery-beat (see the admin)."""

from celery import shared_task

from embedhub.jobs.services import jobs_reap


@shared_task(name="embedhub.reap_jobs")
def reap_jobs() -> dict:
    """Re-queue jobs whose worker died and re-send jobs whose broker message was lost."""
    return jobs_reap()
