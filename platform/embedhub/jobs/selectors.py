from collections.abc import Iterable

from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from embedhub.core.selectors import owned_by
from embedhub.jobs.models import Job

ACTIVE = (Job.Status.QUEUED, Job.Status.RUNNING)


def job_list(*, user, filters: dict | None = None) -> QuerySet[Job]:
    qs = owned_by(Job.objects.all(), user=user).select_related("corpus", "owner")
    return qs.filter(**(filters or {}))


def corpus_visible(*, user) -> QuerySet:
    """The corpora `user` may see, as list filters resolve them: without corpora's
    corpus_list, which this app (below corpora) cannot import and whose document counts a
    filter does not need; both scope with core's owned_by."""
    return owned_by(Job.corpus.field.related_model.objects.all(), user=user)


def job_by_idempotency_key(*, owner, idempotency_key: str) -> Job | None:
    return Job.objects.filter(owner=owner, idempotency_key=idempotency_key).first()


def job_get(*, user, job_id: int) -> Job:
    """Another user's job is a 404, not a 403, so ids don't leak."""
    return get_object_or_404(job_list(user=user), pk=job_id)


def job_active_touching(*, corpus_id: int, kinds: Iterable[str]) -> QuerySet[Job]:
    """Queued or running jobs of `kinds` that work on the corpus, oldest first: by their
    corpus, or by naming it in their params ("corpus", or a plan in "corpora": a job over
    several corpora has no single corpus). Not owner-scoped: a conflict is a conflict
    whoever submitted it. Shards are left out: their parent job is the one to name."""
    touches = (
        Q(corpus_id=corpus_id)
        | Q(params__corpus=corpus_id)
        | Q(params__corpora__contains=[{"corpus": corpus_id}])
    )
    return Job.objects.filter(
        touches, kind__in=list(kinds), status__in=ACTIVE, parent__isnull=True
    ).order_by("pk")
