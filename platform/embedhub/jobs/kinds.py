"""The job-kind registry: every kind declares itself once, next to the code it runs.

A kind is one `JobKind` in its app's `jobs.py` (for example `embedhub/vectors/jobs.py`):
its name and queue, a DRF `Params` serializer, `prepare(*, user, params)` and
`run(*, job, ctx)`. The jobs app imports every `embedhub.<app>.jobs` module at start-up
(`JobsConfig.ready`) and refuses to start when a `Job.Kind` has no complete declaration,
so a half-added kind fails at boot rather than on its first submission.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import module_has_submodule
from rest_framework import serializers

from embedhub.jobs.models import Job

QUEUES = ("cpu", "gpu")  # gpu: kinds that run a model (CPU workers serve it where no GPU is)
KIND_MODULE = "jobs"


@dataclass(frozen=True)
class JobKind:
    """One job kind.

    - params: validates and types the submitted params (unknown keys rejected, owned ids
      resolved to objects); nothing is written before it passes.
    - prepare(*, user, params) -> (json params, corpus or None): business checks on the
      validated params and whatever the job needs created before it runs (an index).
    - run(*, job, ctx) -> result dict, in the worker.
    - before_retry(*, job) (optional): the business checks prepare made that must hold
      again before a failed or cancelled job of this kind is queued again (a reindex or a
      policy job re-checks that no other job may swap the same corpus's index); raises an
      ApplicationError to refuse the retry. Runs in the retry's transaction, so the locks
      it takes hold until the job is queued; shards are never checked.
    """

    name: str
    queue: str
    params: type[serializers.Serializer]
    prepare: Callable[..., tuple[dict, Any]]
    run: Callable[..., dict]
    description: str = ""
    before_retry: Callable[..., None] | None = None


_KINDS: dict[str, JobKind] = {}


def job_kind_problems(kind: JobKind) -> list[str]:
    problems = []
    if kind.name not in Job.Kind.values:
        problems.append(f"{kind.name!r} is not a Job.Kind (add it there, with a migration)")
    if kind.queue not in QUEUES:
        problems.append(f"{kind.name}: queue {kind.queue!r} is not one of {QUEUES}")
    if not (isinstance(kind.params, type) and issubclass(kind.params, serializers.Serializer)):
        problems.append(f"{kind.name}: params must be a DRF Serializer class")
    for part in ("prepare", "run"):
        if not callable(getattr(kind, part, None)):
            problems.append(f"{kind.name}: {part} is not callable")
    if kind.before_retry is not None and not callable(kind.before_retry):
        problems.append(f"{kind.name}: before_retry is not callable")
    if not kind.description:
        problems.append(f"{kind.name}: description is empty (it documents the kind in OpenAPI)")
    return problems


def job_kind_register(kind: JobKind) -> JobKind:
    problems = job_kind_problems(kind)
    if problems:
        raise ImproperlyConfigured("; ".join(problems))
    registered = _KINDS.get(kind.name)
    if registered is not None and registered.run is not kind.run:
        raise ImproperlyConfigured(f"job kind {kind.name!r} is declared twice")
    _KINDS[kind.name] = kind
    return kind


def job_kind_get(name: str) -> JobKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise ImproperlyConfigured(f"job kind {name!r} is not declared") from None


def job_kinds() -> list[JobKind]:
    """Every declared kind, in Job.Kind order."""
    return [_KINDS[name] for name in Job.Kind.values if name in _KINDS]


def job_kinds_discover() -> None:
    """Import each embedhub app's jobs module, where its kinds register themselves."""
    for config in apps.get_app_configs():
        if config.name.startswith("embedhub.") and module_has_submodule(config.module, KIND_MODULE):
            import_module(f"{config.name}.{KIND_MODULE}")


def job_kinds_check() -> list[str]:
    """What is missing: a Job.Kind without a declaration, or a declaration with a gap."""
    problems = [
        f"Job.Kind {name!r} has no JobKind declaration in any embedhub.<app>.jobs module"
        for name in Job.Kind.values
        if name not in _KINDS
    ]
    for kind in _KINDS.values():
        problems += job_kind_problems(kind)
    return problems
