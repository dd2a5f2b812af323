"""Idempotency-Key: a client's retry of a submission answers with the job its first request
made, and never with another request's job.

Each key (per user) is stored with a fingerprint of the request it came with: a hash of the
canonical JSON of what was submitted. The same key with a different request (another kind,
other params, another endpoint) is refused with a 422, as the IETF draft on the header and
Stripe do; answering with the first request's job would tell the client its second request
was done when it never ran.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from rest_framework import status

from embedhub.core.errors import ApplicationError
from embedhub.jobs import selectors
from embedhub.jobs.models import Job

HEADER = "Idempotency-Key"


class IdempotencyKeyReused(ApplicationError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "idempotency_key_reused"


def idempotency_key_check(key: str | None) -> str | None:
    """The key to store (None: no key), or a 400 naming the header for one that the column
    cannot hold. Called before anything is created for the request."""
    if not key:
        return None
    limit = Job._meta.get_field("idempotency_key").max_length
    problem = ""
    if len(key) > limit:
        problem = f"at most {limit} characters, not {len(key)}"
    elif not key.isprintable():  # a NUL cannot be stored; control characters are no key
        problem = "printable characters only"
    if problem:
        raise ApplicationError(
            f"{HEADER}: {problem}", details={"field": HEADER}, code="invalid_header"
        )
    return key


def request_fingerprint(request: Mapping) -> str:
    """A hash of the canonical JSON (sorted keys, no spacing) of what a request submitted
    (a job's kind and params as sent), so that a retry of it hashes the same and any other
    request does not."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def job_for_idempotency_key(*, owner, idempotency_key: str, fingerprint: str) -> Job | None:
    """The job the key's first request made (None: the key is new); a 422 when that
    request differs from this one. A blank fingerprint on either side (a job submitted
    before fingerprints were stored, or by code that passes none) matches any request."""
    job = selectors.job_by_idempotency_key(owner=owner, idempotency_key=idempotency_key)
    if job is None:
        return None
    stored = job.idempotency_fingerprint
    if stored and fingerprint and stored != fingerprint:
        raise IdempotencyKeyReused(
            f"{HEADER}: {idempotency_key!r} was already used for a different request (job "
            f"{job.pk}); send a new key with a new request",
            details={"field": HEADER, "job": job.pk},
        )
    return job
