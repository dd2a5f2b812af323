"""The `reindex` job's work (declared in continual/jobs.py), scheduled reindexing and
index retention.

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

from embedhub.continual import selectors as continual_selectors
from embedhub.continual.models import GateResult
from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Corpus
from embedhub.evaluation.models import QuerySet
from embedhub.evaluation.services import evaluation_run
from embedhub.jobs.models import Job
from embedhub.jobs.services import JobCancelled, JobLost
from embedhub.jobs.submission import job_submit_checked
from embedhub.registry.models import ModelVersion
from embedhub.vectors import selectors
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.services import (
    index_activate_screened,
    index_build,
    index_create,
    index_drop,
    index_locked,
)

logger = logging.getLogger(__name__)

GATE_METRIC = "ndcg@10"
DEFAULT_TOLERANCE = 0.01


# ------------------------------------------------------------------ the shadow index


def reindex_shadow(*, user, corpus: Corpus, version: ModelVersion, options: dict) -> VectorIndex:
    """An unfinished index of the same kind is reused (a cancelled reindex resumes where it
    stopped; a retired one only embeds what changed since)."""
    existing = selectors.index_matching(corpus=corpus, model_version=version, **options)
    if existing is not None and existing.pk != corpus.active_index_id:
        return existing
    return index_create(owner=user, corpus=corpus, model_version=version, **options)


# ------------------------------------------------------------------ the job


def _ndcg(*, owner, index: VectorIndex, query_set, ctx) -> dict:
    """Gate evaluation by the evaluation app (stores an EvalRun, so it shows with the rest)."""
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
            index=shadow,
            ctx=ctx,
            batch_size=job.params.get("batch_size"),
            activate=False,
            force=job.params.get("force", False),
            shard_size=job.params.get("shard_size"),
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
        gate["gate_result"] = gate_result_record(
            job=job, corpus=corpus, shadow=shadow, gate=gate
        ).pk
    ctx.check_cancel()  # a cancel up to here leaves the active index as it was
    activated = gate is None or gate["passed"]
    screened = None
    if activated:
        # The shadow build quarantined nothing: the swap screens it by hubness first.
        _, screened = index_activate_screened(index=shadow, ctx=ctx, done=ctx.job.progress_done)
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
        **({} if screened is None else {"screening": screened}),
    }


def gate_result_record(*, job, corpus: Corpus, shadow: VectorIndex, gate: dict) -> GateResult:
    """Store the verdict for (shadow's version, corpus, query set), replacing the previous
    one of that triple: it is what `only_gated` asks about, for this corpus only."""
    result, _ = GateResult.objects.update_or_create(
        model_version_id=shadow.model_version_id,
        corpus=corpus,
        query_set_id=gate["query_set"],
        defaults={
            "job": job,
            "new_eval_run_id": gate["new"]["eval_run"],
            "active_eval_run_id": gate["active"]["eval_run"],
            "metric": gate["metric"],
            "new_value": gate["new"][gate["metric"]],
            "active_value": gate["active"][gate["metric"]],
            "tolerance": gate["tolerance"],
            "passed": gate["passed"],
        },
    )
    return result


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
    given = {
        "model_version": model_version,
        "model_name": model_name,
        "only_gated": only_gated,
        "gate": gate or None,
    }
    params = {"corpus": corpus.pk, **{k: v for k, v in given.items() if v is not None}}
    with transaction.atomic():
        Corpus.objects.select_for_update().filter(pk=corpus.pk).first()
        try:
            job, _ = job_submit_checked(user=corpus.owner, kind=Job.Kind.REINDEX, params=params)
        except ApplicationError as exc:
            logger.info("not reindexing corpus %s: %s", corpus.pk, exc.message)
            return None, exc.message
    return job, "submitted"


def indexes_drop_expired(*, now=None) -> list[int]:
    """Drop retired indexes older than INDEX_RETENTION_DAYS (their rollback window is over).

    The scan only nominates candidates: each is re-checked under its corpus's row lock,
    since a rollback may have re-activated it, or a reindex picked it as its shadow, after
    the scan read it.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.EMBEDHUB["INDEX_RETENTION_DAYS"])
    candidates = list(
        VectorIndex.objects.filter(state=VectorIndex.State.RETIRED, retired_at__lt=cutoff)
    )
    dropped = [index.pk for index in candidates if _drop_if_expired(index=index, cutoff=cutoff)]
    if dropped:
        logger.info("dropped %d retired indexes past retention: %s", len(dropped), dropped)
    return dropped


def _drop_if_expired(*, index: VectorIndex, cutoff) -> bool:
    with index_locked(index=index) as corpus:
        retired_at = index.retired_at if index.state == VectorIndex.State.RETIRED else None
        expired = retired_at is not None and retired_at < cutoff
        in_use = corpus.active_index_id == index.pk or continual_selectors.index_wanted_by_job(
            index=index
        )
        if not expired or in_use:
            return False
        index_drop(index=index)
    return True
