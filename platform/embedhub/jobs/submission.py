"""Submitting a job over the API: each kind's app checks and normalises its params first.

A preparer takes (user=..., params=...) and returns (params, corpus) or raises
ApplicationError/NotFound naming the bad field. It runs before the Job row exists, so a
bad request never leaves a job behind.
"""

from __future__ import annotations

import importlib

from embedhub.jobs.models import Job
from embedhub.jobs.services import job_submit

PREPARERS: dict[str, str] = {
    Job.Kind.INGEST: "embedhub.corpora.services.ingest_job_prepare",
    Job.Kind.EMBED: "embedhub.vectors.services.embed_job_prepare",
    Job.Kind.EVALUATE: "embedhub.evaluation.services.evaluate_job_prepare",
    Job.Kind.FINETUNE: "embedhub.registry.finetune.finetune_job_prepare",
    Job.Kind.REINDEX: "embedhub.vectors.reindex.reindex_job_prepare",
    Job.Kind.AUDIT: "embedhub.audits.services.audit_job_prepare",
}


def _preparer(kind: str):
    module_name, func = PREPARERS[kind].rsplit(".", 1)
    return getattr(importlib.import_module(module_name), func)


def job_submit_checked(
    *, user, kind: str, params: dict, idempotency_key: str | None = None
) -> tuple[Job, bool]:
    if idempotency_key:
        # Checked before preparing too: a preparer may create objects (an embed job's index).
        existing = Job.objects.filter(owner=user, idempotency_key=idempotency_key).first()
        if existing:
            return existing, False
    params, corpus = _preparer(kind)(user=user, params=params)
    return job_submit(
        owner=user, kind=kind, params=params, corpus=corpus, idempotency_key=idempotency_key
    )
