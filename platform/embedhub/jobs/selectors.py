from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from embedhub.core.selectors import owned_by
from embedhub.jobs.models import Job


def job_list(*, user, filters: dict | None = None) -> QuerySet[Job]:
    qs = owned_by(Job.objects.all(), user=user).select_related("corpus", "owner")
    return qs.filter(**(filters or {}))


def job_get(*, user, job_id: int) -> Job:
    """Another user's job is a 404, not a 403, so ids don't leak."""
    return get_object_or_404(job_list(user=user), pk=job_id)
