"""Sharded jobs: one job's work split into shard jobs that any number of workers claim.

A shard is an ordinary Job with `parent` set, so it has everything a job has: its own
claim token, heartbeat, checkpoint, crash policy and backoff. The parent creates its shards
once, then runs queued ones in its own worker (so one worker still finishes the job) while
other workers take the rest; it sums their progress and returns when all have succeeded.
Cancel on the parent cancels the shards (`job_cancel`); a retry of the parent re-queues the
shards that failed and keeps the ones that finished.

One parent may own the shards of several builds in sequence (a policy job builds a shadow
index per corpus): `scope`, params every shard of one build has (e.g. {"index": 7}), keeps
each build to its own shards. Without it a build is all of the parent's shards.
"""

from __future__ import annotations

import time

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from embedhub.core.errors import ApplicationError
from embedhub.jobs import services
from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_claim_and_run

POLL_SECONDS = 0.5  # how often a parent with nothing to run itself looks at its shards
SHARD_FAILED = "shard_failed"  # the code of the error a broken shard fails its parent with


def job_shards(*, parent: Job, scope: dict | None = None) -> QuerySet[Job]:
    """The parent's shards; with `scope`, only those of one build (their params contain it)."""
    shards = parent.shards.all()
    return shards.filter(params__contains=scope) if scope else shards


def job_shards_ensure(
    *,
    parent: Job,
    kind: str,
    shard_params: list[dict],
    scope: dict | None = None,
    corpus=None,
) -> list[Job]:
    """The build's shards, created (and dispatched) on its first run only; a later attempt
    re-queues the failed or cancelled ones and keeps the rest. Each of `shard_params` must
    contain `scope`; `corpus` defaults to the parent's (a policy job spans several)."""
    shards = list(job_shards(parent=parent, scope=scope).order_by("pk"))
    if not shards:
        with transaction.atomic():
            for params in shard_params:
                services.job_submit(
                    owner=parent.owner,
                    kind=kind,
                    params=params,
                    corpus=corpus or parent.corpus,
                    parent=parent,
                )
        return list(job_shards(parent=parent, scope=scope).order_by("pk"))
    for shard in shards:
        if shard.status in (Job.Status.FAILED, Job.Status.CANCELLED):
            services.job_retry(job=shard)
    return shards


def job_shards_wait(
    *, ctx, unit: str, total: int, label: str, scope: dict | None = None
) -> list[Job]:
    """Run or wait for the build's shards until all have succeeded; returns them.

    Raises (failing the parent, whose retry resumes) when a shard failed or was cancelled on
    its own; a cancel of the parent reaches here as JobCancelled from `ctx.progress`."""
    parent = ctx.job
    while True:
        shards = list(job_shards(parent=parent, scope=scope).order_by("pk"))
        _report(ctx=ctx, shards=shards, unit=unit, total=total, label=label)
        _raise_if_broken(shards)
        if all(shard.status == Job.Status.SUCCEEDED for shard in shards):
            return shards
        runnable = _runnable(parent, scope)
        if runnable is None:
            time.sleep(POLL_SECONDS)
        else:  # "skipped" when another worker claimed it first: look again
            job_claim_and_run(job_id=runnable, worker=parent.worker)


def _report(*, ctx, shards: list[Job], unit: str, total: int, label: str) -> None:
    done = sum(shard.progress_done for shard in shards)
    finished = sum(shard.status == Job.Status.SUCCEEDED for shard in shards)
    running = sum(shard.status == Job.Status.RUNNING for shard in shards)
    note = services.shards_note(label=label, finished=finished, shards=len(shards), running=running)
    # at_least: a shard may have rolled a newer sum into the parent since we read these.
    # (A parent counting in another unit gets no roll-up: `ctx` maps the sum onto its own.)
    ctx.progress(done, total=total, unit=unit, note=note, at_least=True)


def _raise_if_broken(shards: list[Job]) -> None:
    for shard in shards:
        if shard.status in (Job.Status.FAILED, Job.Status.CANCELLED):
            raise ApplicationError(
                f"shard job {shard.pk} {shard.status}"
                + (f": {shard.error}" if shard.error else "")
                + "; retry this job to resume its unfinished shards (finished ones are kept)",
                code=SHARD_FAILED,
            )


def _runnable(parent: Job, scope: dict | None) -> int | None:
    """A queued shard this worker may start now (one backing off after stalls waits)."""
    queued = (
        job_shards(parent=parent, scope=scope)
        .filter(status=Job.Status.QUEUED, cancel_requested=False)
        .filter(Q(stalled_attempts=0) | Q(next_dispatch_at__lte=timezone.now()))
    )
    return queued.order_by("pk").values_list("pk", flat=True).first()
