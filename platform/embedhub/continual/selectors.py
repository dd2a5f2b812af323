"""Reads of continual learning: which version a corpus moves to, and what is in flight.

Everything here is about one corpus and its owner: a corpus only moves to versions its
owner may see, and only its own gate results count."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import QuerySet

from embedhub.continual.models import GateResult
from embedhub.core.errors import ApplicationError
from embedhub.core.selectors import owned_by
from embedhub.corpora.models import Corpus
from embedhub.jobs.models import Job
from embedhub.registry.models import ModelVersion
from embedhub.registry.selectors import model_version_visible
from embedhub.vectors.models import VectorIndex

ACTIVE_JOB = (Job.Status.QUEUED, Job.Status.RUNNING)


def newest_version(
    *,
    corpus: Corpus,
    model_id: int | None = None,
    model_name: str | None = None,
    only_gated: bool = False,
) -> ModelVersion | None:
    """The newest ready version of a model that the corpus's owner may see. A version whose
    latest gate on this corpus failed (on any of its query sets) is never chosen; with
    only_gated, it must also have passed one on this corpus. Gates on other corpora say
    nothing about this one."""
    qs = model_version_visible(user=corpus.owner).filter(status=ModelVersion.Status.READY)
    gates = GateResult.objects.filter(corpus=corpus)
    qs = qs.exclude(pk__in=gates.filter(passed=False).values("model_version"))
    if model_id is not None:
        qs = qs.filter(model_id=model_id)
    if model_name is not None:
        qs = qs.filter(model__name=model_name)
    if only_gated:
        qs = qs.filter(pk__in=gates.filter(passed=True).values("model_version"))
    return qs.select_related("model").order_by("-version").first()


def reindex_target_version(
    *, corpus: Corpus, model_name: str | None, only_gated: bool
) -> ModelVersion:
    """What a reindex without an explicit version moves the corpus to."""
    active = corpus.active_index
    if model_name:
        version = newest_version(corpus=corpus, model_name=model_name, only_gated=only_gated)
    elif active is not None:
        version = newest_version(
            corpus=corpus, model_id=active.model_version.model_id, only_gated=only_gated
        )
    else:
        raise ApplicationError(
            f"corpus {corpus.pk} has no active index to take the model from: give model_version"
        )
    if version is None:
        raise ApplicationError(
            "no ready version to reindex with"
            + (" that passed a gate on this corpus" if only_gated else ""),
            code="no_version",
        )
    return version


def reindex_running(*, corpus: Corpus) -> Job | None:
    return Job.objects.filter(corpus=corpus, kind=Job.Kind.REINDEX, status__in=ACTIVE_JOB).first()


def index_wanted_by_job(*, index: VectorIndex) -> bool:
    """A queued or running job names this index in its params: a reindex builds into it (it
    may reuse a retired index as its shadow), an audit reads it. Retention must wait."""
    return Job.objects.filter(
        corpus_id=index.corpus_id, status__in=ACTIVE_JOB, params__index=index.pk
    ).exists()


def corpora_manageable(*, owner: str | None = None) -> QuerySet[Corpus]:
    """The corpora a schedule may touch: those of active accounts and, for a schedule that
    names its `owner` (a username), only those that account may manage (staff: all)."""
    corpora = Corpus.objects.filter(owner__is_active=True).select_related(
        "owner", "active_index__model_version"
    )
    if owner is None:
        return corpora
    user = get_user_model().objects.filter(username=owner, is_active=True).first()
    return owned_by(corpora, user=user)  # an unknown account manages nothing


def corpora_stale(*, owner: str | None = None, only_gated: bool = False) -> list[Corpus]:
    """Manageable corpora whose active index was built by an older version than the newest
    version of its model that the corpus's owner may see."""
    stale = []
    for corpus in corpora_manageable(owner=owner).filter(active_index__isnull=False):
        current = corpus.active_index.model_version
        newest = newest_version(corpus=corpus, model_id=current.model_id, only_gated=only_gated)
        if newest is not None and newest.version > current.version:
            stale.append(corpus)
    return stale


def gate_result_list(*, user) -> QuerySet[GateResult]:
    """Gate results on the corpora `user` owns (staff: all)."""
    qs = GateResult.objects.select_related("corpus", "query_set", "model_version")
    return owned_by(qs, user=user, field="corpus__owner")
