"""Reads of continual learning: which version a corpus moves to, and what is in flight."""

from __future__ import annotations

from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Corpus
from embedhub.jobs.models import Job
from embedhub.registry.models import ModelVersion

ACTIVE_JOB = (Job.Status.QUEUED, Job.Status.RUNNING)


def newest_version(
    *, model_id: int | None = None, model_name: str | None = None, only_gated: bool = False
) -> ModelVersion | None:
    """The newest ready version of a model. Versions that failed a gate are never chosen;
    with only_gated, only versions that passed one are."""
    qs = ModelVersion.objects.filter(status=ModelVersion.Status.READY).exclude(gate_passed=False)
    if model_id is not None:
        qs = qs.filter(model_id=model_id)
    if model_name is not None:
        qs = qs.filter(model__name=model_name)
    if only_gated:
        qs = qs.filter(gate_passed=True)
    return qs.select_related("model").order_by("-version").first()


def reindex_target_version(
    *, corpus: Corpus, model_name: str | None, only_gated: bool
) -> ModelVersion:
    """What a reindex without an explicit version moves the corpus to."""
    active = corpus.active_index
    if model_name:
        version = newest_version(model_name=model_name, only_gated=only_gated)
    elif active is not None:
        version = newest_version(model_id=active.model_version.model_id, only_gated=only_gated)
    else:
        raise ApplicationError(
            f"corpus {corpus.pk} has no active index to take the model from: give model_version"
        )
    if version is None:
        raise ApplicationError(
            "no ready version to reindex with" + (" that passed its gate" if only_gated else ""),
            code="no_version",
        )
    return version


def reindex_running(*, corpus: Corpus) -> Job | None:
    return Job.objects.filter(corpus=corpus, kind=Job.Kind.REINDEX, status__in=ACTIVE_JOB).first()


def corpora_stale(*, only_gated: bool = False) -> list[Corpus]:
    """Corpora whose active index was built by an older version than the newest of its model."""
    stale = []
    corpora = Corpus.objects.filter(active_index__isnull=False).select_related(
        "owner", "active_index__model_version"
    )
    for corpus in corpora:
        current = corpus.active_index.model_version
        newest = newest_version(model_id=current.model_id, only_gated=only_gated)
        if newest is not None and newest.version > current.version:
            stale.append(corpus)
    return stale
