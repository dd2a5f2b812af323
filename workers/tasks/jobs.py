"""The one Celery task that runs jobs: fetch by id, claim, call the service."""

from celery import shared_task

from embedhub.jobs.runner import job_execute


@shared_task(name="embedhub.run_job", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: int) -> str:
    return job_execute(job_id=job_id, worker=f"{self.request.hostname}")
