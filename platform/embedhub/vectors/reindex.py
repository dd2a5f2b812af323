"""The `reindex` job, scheduled reindexing and index retention.

A reindex builds a shadow index of the corpus with the target model version while search
keeps using the active index (queries of a newer version are drift-compensated there,
see compensation.py), optionally checks the shadow against the active index on a query
set (the gate), and only then swaps the corpus's active index in one transaction. Until
that swap nothing a user searches changes, so a failed, cancelled or killed reindex
leaves the active index exactly as it was; the retired index stays for rollback until
the retention period ends.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from embedhub.core.errors import ApplicationError, Conflict
from embedhub.corpora.models import Corpus
from embedhub.jobs.models import Job
from embedhub.jobs.services import JobCancelled, JobLost
from embedhub.registry.models import ModelVersion
from embedhub.vectors import selectors
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.services import (
    _index_options,
    index_activate,
    index_build,
    index_create,
    index_drop,
    model_version_resolve,
)

logger = logging.getLogger(__name__)

GATE_METRIC = "ndcg@10"
DEFAULT_TOLERANCE = 0.01
ACTIVE_JOB = (Job.Status.QUEUED, Job.Status.RUNNING)


# ------------------------------------------------------------------ choosing the target


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


def _target_version(*, corpus: Corpus, params: dict) -> ModelVersion:
    if params.get("model_version") not in (None, ""):
        return model_version_resolve(version_id=params["model_version"])
    active = corpus.active_index
    if params.get("model_name"):
        version = newest_version(
            model_name=params["model_name"], only_gated=bool(params.get("only_gated"))
        )
    elif active is not None:
        version = newest_version(
            model_id=active.model_version.model_id, only_gated=bool(params.get("only_gated"))
        )
    else:
        raise ApplicationError(
            f"corpus {corpus.pk} has no active index to take the model from: give model_version"
        )
    if version is None:
        raise ApplicationError(
            "model_version: no ready version to reindex with"
            + (" that passed its gate" if params.get("only_gated") else ""),
            code="no_version",
        )
    return version


def _options(*, params: dict, active: VectorIndex | None) -> dict:
    """How the shadow is built: like the active index unless the params say otherwise."""
    inherited = {}
    if active is not None:
        inherited = {
            "storage": active.storage,
            "chunking": active.chunking,
            "encoder": active.encoder,
            "chunk_window": active.chunk_window,
            "chunk_overlap": active.chunk_overlap,
        }
    return _index_options({**inherited, **{k: v for k, v in params.items() if v is not None}})


def _gate(*, user, corpus: Corpus, gate) -> dict | None:
    if gate in (None, {}, ""):
        return None
    from embedhub.evaluation.selectors import query_set_get

    if not isinstance(gate, dict) or gate.get("query_set") in (None, ""):
        raise ApplicationError('gate: expected {"query_set": <id>, "tolerance": 0.01}')
    query_set = query_set_get(user=user, query_set_id=gate["query_set"])
    if query_set.corpus_id != corpus.pk:
        raise ApplicationError(
            f"gate.query_set: query set {query_set.pk} belongs to corpus {query_set.corpus_id}, "
            f"not to corpus {corpus.pk}"
        )
    tolerance = gate.get("tolerance", DEFAULT_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance < 0:
        raise ApplicationError("gate.tolerance: must be a number >= 0 (nDCG@10 points, 0.01 = 1%)")
    return {"query_set": query_set.pk, "tolerance": float(tolerance)}


def reindex_running(*, corpus: Corpus) -> Job | None:
    return Job.objects.filter(corpus=corpus, kind=Job.Kind.REINDEX, status__in=ACTIVE_JOB).first()


def _shadow(*, user, corpus: Corpus, version: ModelVersion, options: dict) -> VectorIndex:
    """An unfinished index of the same kind is reused (a cancelled reindex resumes where it
    stopped; a retired one only embeds what changed since)."""
    existing = selectors.index_matching(corpus=corpus, model_version=version, **options)
    if existing is not None and existing.pk != corpus.active_index_id:
        return existing
    return index_create(owner=user, corpus=corpus, model_version=version, **options)


def reindex_job_prepare(*, user, params: dict) -> tuple[dict, Corpus]:
    corpus = selectors.corpus_for_user(user=user, corpus_id=params.get("corpus"))
    active = corpus.active_index
    version = _target_version(corpus=corpus, params=params)
    option_keys = ("storage", "chunking", "chunk_window", "chunk_overlap", "encoder")
    options = _options(params={k: params.get(k) for k in option_keys}, active=active)
    if (
        active is not None
        and active.model_version_id == version.pk
        and all(getattr(active, key) == value for key, value in options.items())
    ):
        raise Conflict(
            f"corpus {corpus.pk} is already indexed with {version} (index {active.pk})",
            code="up_to_date",
        )
    gate = _gate(user=user, corpus=corpus, gate=params.get("gate"))
    if gate is not None and active is None:
        raise ApplicationError("gate: the corpus has no active index to compare with")
    running = reindex_running(corpus=corpus)
    if running is not None:
        raise Conflict(
            f"reindex job {running.pk} for corpus {corpus.pk} is already {running.status}; "
            "wait for it or cancel it",
            code="reindex_running",
        )
    shadow = _shadow(user=user, corpus=corpus, version=version, options=options)
    normalised = {
        "corpus": corpus.pk,
        "model_version": version.pk,
        "index": shadow.pk,
        "previous_index": active.pk if active else None,
        "gate": gate,
        "batch_size": params.get("batch_size"),
    }
    return normalised, corpus


# ------------------------------------------------------------------ the job


def _ndcg(*, owner, index: VectorIndex, query_set, ctx) -> dict:
    """Gate evaluation by the evaluation app (stores an EvalRun, so it shows with the rest)."""
    from embedhub.evaluation.services import evaluation_run

    run = evaluation_run(
        owner=owner,
        index=index,
        query_set=query_set,
        model_version=index.model_version,
        compensation="none",
    )
    ctx.check_cancel()
    return {
        "eval_run": run.pk,
        "index": index.pk,
        "model_version": index.model_version_id,
        GATE_METRIC: run.metrics[GATE_METRIC],
        "n_queries": run.n_queries,
    }


def _gate_check(*, job, ctx, shadow: VectorIndex, active: VectorIndex) -> dict:
    from embedhub.evaluation.models import QuerySet

    gate = job.params["gate"]
    query_set = QuerySet.objects.get(pk=gate["query_set"])
    ctx.progress(ctx.job.progress_done, note=f"gate: evaluating the new index {shadow.pk}")
    new = _ndcg(owner=job.owner, index=shadow, query_set=query_set, ctx=ctx)
    ctx.progress(ctx.job.progress_done, note=f"gate: evaluating the active index {active.pk}")
    old = _ndcg(owner=job.owner, index=active, query_set=query_set, ctx=ctx)
    passed = new[GATE_METRIC] >= old[GATE_METRIC] - gate["tolerance"]
    return {
        "query_set": query_set.pk,
        "metric": GATE_METRIC,
        "tolerance": gate["tolerance"],
        "new": new,
        "active": old,
        "passed": passed,
    }


def reindex_job_run(*, job, ctx) -> dict:
    shadow = VectorIndex.objects.select_related("corpus", "model_version").get(
        pk=job.params["index"]
    )
    corpus = Corpus.objects.select_related("active_index").get(pk=job.params["corpus"])
    if corpus.active_index_id == shadow.pk:  # an earlier attempt swapped, then died
        return {"index": shadow.pk, "activated": True, "resumed_after_swap": True}
    try:
        build = index_build(
            index=shadow, ctx=ctx, batch_size=job.params.get("batch_size"), activate=False
        )
    except (JobCancelled, JobLost):
        raise  # the shadow stays "building": a retry or the reaper resumes it
    except Exception:
        VectorIndex.objects.filter(pk=shadow.pk).update(state=VectorIndex.State.FAILED)
        raise
    shadow.refresh_from_db()
    corpus.refresh_from_db()
    active = corpus.active_index
    gate = None
    if job.params.get("gate") and active is not None:
        gate = _gate_check(job=job, ctx=ctx, shadow=shadow, active=active)
        ModelVersion.objects.filter(pk=shadow.model_version_id).update(gate_passed=gate["passed"])
    ctx.check_cancel()  # a cancel up to here leaves the active index as it was
    activated = gate is None or gate["passed"]
    if activated:
        index_activate(index=shadow)
    else:
        # Kept (and activatable by hand), but retired so retention eventually drops it.
        VectorIndex.objects.filter(pk=shadow.pk).update(
            state=VectorIndex.State.RETIRED, retired_at=timezone.now()
        )
    return {
        "index": shadow.pk,
        "model_version": shadow.model_version_id,
        "previous_index": active.pk if active else None,
        "activated": activated,
        "gate": gate,
        "build": build,
    }


# ------------------------------------------------------------------ schedules and retention


def reindex_schedule_submit(
    *,
    corpus: Corpus,
    model_version: int | None = None,
    model_name: str | None = None,
    only_gated: bool = False,
    gate: dict | None = None,
) -> tuple[Job | None, str]:
    """Submit a reindex of `corpus` for a periodic task, as the corpus's owner.

    Returns (job, "submitted") or (None, why not): already up to date, a reindex already
    queued or running, no suitable version. The corpus row is locked while checking, so
    two beats firing at once still submit one job.
    """
    from embedhub.jobs.services import job_submit

    params = {
        "corpus": corpus.pk,
        "model_version": model_version,
        "model_name": model_name,
        "only_gated": only_gated,
        "gate": gate,
    }
    with transaction.atomic():
        Corpus.objects.select_for_update().filter(pk=corpus.pk).first()
        try:
            prepared, corpus = reindex_job_prepare(user=corpus.owner, params=params)
        except ApplicationError as exc:
            logger.info("not reindexing corpus %s: %s", corpus.pk, exc.message)
            return None, exc.message
        job, _ = job_submit(
            owner=corpus.owner, kind=Job.Kind.REINDEX, params=prepared, corpus=corpus
        )
    return job, "submitted"


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


def indexes_drop_expired(*, now=None) -> list[int]:
    """Drop retired indexes older than INDEX_RETENTION_DAYS (their rollback window is over)."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.EMBEDHUB["INDEX_RETENTION_DAYS"])
    expired = VectorIndex.objects.filter(
        state=VectorIndex.State.RETIRED, retired_at__lt=cutoff
    ).select_related("corpus")
    dropped = []
    for index in expired:
        if index.corpus.active_index_id == index.pk:
            continue  # re-activated by hand: in use again
        index_drop(index=index)
        dropped.append(index.pk)
    if dropped:
        logger.info("dropped %d retired indexes past retention: %s", len(dropped), dropped)
    return dropped
