"""Submitting a job: the kind's Params serializer, then its prepare, then the Job row.

All three run in one transaction, so a request that fails at any step leaves nothing
behind: no job, and no index or vector table that a preparer had started to create.
"""

from __future__ import annotations

from django.db import transaction
from rest_framework import serializers

from embedhub.jobs.idempotency import (
    idempotency_key_check,
    job_for_idempotency_key,
    request_fingerprint,
)
from embedhub.jobs.kinds import job_kind_get
from embedhub.jobs.models import Job
from embedhub.jobs.params import params_error, params_validate
from embedhub.jobs.services import job_submit


def job_params_prepare(*, user, kind: str, params, from_form: bool = False) -> tuple[dict, object]:
    """(json params, corpus) for a job of `kind`, or an error naming the params field."""
    spec = job_kind_get(kind)
    validated = params_validate(
        serializer=spec.params, user=user, params=params, from_form=from_form
    )
    try:
        return spec.prepare(user=user, params=validated)
    except serializers.ValidationError as exc:  # a business check that names its field
        raise params_error(exc.detail) from None


def job_submit_checked(
    *,
    user,
    kind: str,
    params,
    idempotency_key: str | None = None,
    fingerprint: str | None = None,
    from_form: bool = False,
) -> tuple[Job, bool]:
    """(job, created). With an idempotency key, a retry of the same request answers with
    the job the first one made, and the key on a different request is refused (422);
    `fingerprint` is the request's (idempotency.request_fingerprint), by default of the kind
    and the params as submitted."""
    key = idempotency_key_check(idempotency_key)
    if key:
        fingerprint = fingerprint or request_fingerprint({"kind": kind, "params": params})
        # Checked before preparing too: a preparer may create objects (an embed job's index).
        existing = job_for_idempotency_key(owner=user, idempotency_key=key, fingerprint=fingerprint)
        if existing:
            return existing, False
    with transaction.atomic():
        prepared, corpus = job_params_prepare(
            user=user, kind=kind, params=params, from_form=from_form
        )
        job, created = job_submit(
            owner=user,
            kind=kind,
            params=prepared,
            corpus=corpus,
            idempotency_key=key,
            fingerprint=fingerprint or "",
        )
        if not created:
            # A concurrent request with the same key won the race: what prepare created
            # for this one (an index, its table) goes.
            transaction.set_rollback(True)
    return job, created
