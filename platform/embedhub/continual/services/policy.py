"""The `policy` job's work (declared in continual/jobs.py): decide, per corpus, how its
queries are served.

For each planned corpus the job measures, as EvalRuns on the corpus's query set:

1. the current serving policy (vectors.selectors.serving_resolve);
2. the candidate version's queries on the current index, with compensation none, qdc and
   (where this server has it) adapter;
3. where allowed, a reindex: a shadow index built with the candidate version (the reindex
   job's own building service), searched by its own version.

It keeps the current policy unless a candidate beats it on the corpus's metric by more than
the tolerance; candidates are listed cheapest first, so a tie goes to the cheaper one. The
shadow is activated only when the reindex wins (otherwise it is retired, and retention drops
it). A candidate that cannot apply (an unrelated version, no drift vector, no adapter) is
recorded as skipped with its reason. Every candidate is scored alike: with the queries' own
documents dropped where the corpus's `exclude_self` setting (or the job) says so. Every
candidate goes into the job's result and onto the corpus's ServingPolicy. The reindex gate
is the special case "current vs reindex".

Progress counts units: one per candidate evaluation and, for a reindex, one per document of
the shadow build, so it only ever rises. Each finished corpus is checkpointed: a retried or
resumed job does not measure it again.

A large shadow build splits into shard jobs under this job like a reindex's (`shard_size`);
each corpus's shadow has its own shards, and a retry resumes the unfinished ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from embedhub.continual.services.reindex import reindex_shadow
from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Corpus
from embedhub.evaluation.models import QuerySet
from embedhub.evaluation.services import evaluation_run
from embedhub.jobs.models import Job
from embedhub.jobs.services import JobCancelled, JobLost
from embedhub.jobs.sharding import SHARD_FAILED
from embedhub.jobs.submission import job_submit_checked
from embedhub.registry.models import ModelVersion
from embedhub.vectors import compensation as qdc
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.services import (
    index_activate_screened,
    index_build,
    serving_policy_apply,
)

logger = logging.getLogger(__name__)

EVALUATIONS_PER_CORPUS = 5  # current, none, qdc, adapter, reindex
OLD_INDEX_COMPENSATIONS = ("none", "qdc", "adapter")
INDEX_OPTIONS = ("storage", "chunking", "encoder", "runtime", "chunk_window", "chunk_overlap")


# ------------------------------------------------------------------ progress


class _Scaled:
    """A job context for one stretch of the policy job's progress: what a service reports
    as done of its own total (documents of a build) becomes a share of `units` after
    `base`, so the job's count never goes backwards across candidates."""

    def __init__(self, ctx, *, base: int, units: int, total: int, label: str):
        self.ctx, self.base, self.units, self.total, self.label = ctx, base, units, total, label
        self._of: int | None = None

    @property
    def job(self):
        return self.ctx.job

    @property
    def checkpoint(self) -> dict:
        return {}  # a build resumes from its table, not from the policy job's checkpoint

    def progress(
        self,
        done: int,
        *,
        total: int | None = None,
        note: str | None = None,
        at_least: bool = False,
        advanced: bool = False,
        **_,
    ):
        # A report without a total (the HNSW build's notes) is of the last total given.
        self._of = total if total is not None else self._of
        share = min(done / self._of, 1.0) if self._of else 0.0
        # at_least (a sharded build's sums) is passed on though nothing else writes this
        # job's count: shards roll up only into a parent counting documents, not steps.
        self.ctx.progress(
            self.base + int(self.units * share),
            total=self.total,
            unit="steps",
            note=f"{self.label}: {note}" if note else self.label,
            at_least=at_least,
            advanced=advanced,
        )

    def check_cancel(self) -> None:
        self.ctx.check_cancel()

    def event(self, *args, **kwargs) -> None:
        self.ctx.event(*args, **kwargs)


def _units(plan: dict) -> int:
    if plan.get("skip"):
        return 1
    return EVALUATIONS_PER_CORPUS + (plan["documents"] if plan["allow_reindex"] else 0)


# ------------------------------------------------------------------ candidates


@dataclass
class _Measure:
    """Evaluates candidates of one corpus and records each one (evaluated or skipped)."""

    job: Job
    corpus: Corpus
    query_set: QuerySet
    metric: str
    exclude_self: bool
    ctx: object  # the job's context: each evaluation reports into one step of it
    total: int

    def evaluate(self, name: str, *, step: int, index, version, compensation: str) -> dict:
        record = {
            "name": name,
            "index": index.pk,
            "index_model_version": index.model_version_id,
            "model_version": version.pk,
            "compensation": compensation,
        }
        try:
            run = evaluation_run(
                owner=self.job.owner,
                index=index,
                query_set=self.query_set,
                model_version=version,
                compensation=compensation,
                exclude_self=self.exclude_self,
                # Its reports (the queries encoded so far) are the cancel points of a step
                # that takes a minute on a large query set.
                ctx=_Scaled(
                    self.ctx,
                    base=step,
                    units=1,
                    total=self.total,
                    label=f"corpus {self.corpus.pk}: {name}",
                ),
            )
        except ApplicationError as exc:  # cannot apply here: unrelated version, no Δ, ...
            return {**record, "status": "skipped", "reason": exc.message}
        return {
            **record,
            "status": "evaluated",
            "compensation": run.compensation,  # what was applied ("qdc" over 0 steps: none)
            "eval_run": run.pk,
            "metric": run.metrics.get(self.metric),
            "metrics": run.metrics,
            "n_queries": run.n_queries,
        }


def _skipped(name: str, reason: str, **fields) -> dict:
    return {"name": name, "status": "skipped", "reason": reason, **fields}


def _old_index_candidates(
    measure: _Measure, *, serving, version: ModelVersion, base: int
) -> list[dict]:
    """The candidate version's queries on the index serving today (steps base, base + 1, …)."""
    out = []
    for step, compensation in enumerate(OLD_INDEX_COMPENSATIONS, start=base):
        name = f"old_index_{compensation}"
        if compensation not in qdc.COMPENSATIONS:
            out.append(_skipped(name, f"this server has no {compensation!r} compensation"))
        elif version.pk == serving.model_version.pk and compensation == serving.compensation:
            out.append(_skipped(name, "the same as the current policy"))
        elif version.pk == serving.index.model_version_id and compensation != "none":
            out.append(_skipped(name, "the index is of this version: nothing to compensate"))
        else:
            out.append(
                measure.evaluate(
                    name,
                    step=step,
                    index=serving.index,
                    version=version,
                    compensation=compensation,
                )
            )
    return out


def _index_options(index: VectorIndex) -> dict:
    """A shadow is built like the index it would replace."""
    return {key: getattr(index, key) for key in INDEX_OPTIONS}


def _reindex_candidate(measure: _Measure, *, serving, version, plan, progress: _Scaled):
    """(record, shadow or None): build the shadow with the candidate version, evaluate it."""
    if not plan["allow_reindex"]:
        return _skipped("reindex", "reindex not allowed for this corpus (allow_reindex)"), None
    if serving.index.model_version_id == version.pk:
        return _skipped("reindex", "the index is already built by this version"), None
    corpus = measure.corpus
    with transaction.atomic():
        Corpus.objects.select_for_update().filter(pk=corpus.pk).first()
        shadow = reindex_shadow(
            user=measure.job.owner,
            corpus=corpus,
            version=version,
            options=_index_options(serving.index),
        )
    try:
        # Sharded like a reindex's build (None: EMBEDHUB_SHARD_SIZE). The shards are this
        # shadow's own (another corpus's has others) and roll no sum into this job, which
        # counts steps: `progress` maps the documents they did onto the build's steps.
        index_build(
            index=shadow,
            ctx=progress,
            batch_size=plan.get("batch_size"),
            activate=False,
            shard_size=plan.get("shard_size"),
        )
    except (JobCancelled, JobLost):
        raise  # the shadow stays "building": a retry resumes it
    except ApplicationError as exc:  # the int8 quality gate, a dropped index, ...
        if exc.code == SHARD_FAILED:
            raise  # the job fails; its retry resumes the shards, keeping the finished ones
        VectorIndex.objects.filter(pk=shadow.pk).update(state=VectorIndex.State.FAILED)
        return _skipped("reindex", f"shadow build refused: {exc.message}", index=shadow.pk), None
    shadow.refresh_from_db()
    record = measure.evaluate(
        "reindex",
        step=progress.base + progress.units,
        index=shadow,
        version=version,
        compensation="none",
    )
    return record, shadow


# ------------------------------------------------------------------ the decision


def policy_choose(*, candidates: list[dict], tolerance: float) -> tuple[int, str]:
    """(index of the chosen candidate, why). candidates[0] is the current policy; the
    others in order of cost. A candidate replaces the current one only when it beats it by
    more than `tolerance`; of equal ones the first (cheapest) wins."""
    current = candidates[0]
    if current.get("status") != "evaluated" or current.get("metric") is None:
        return 0, "the current policy could not be measured: kept"
    scored = [
        (i, c)
        for i, c in enumerate(candidates)
        if c.get("status") == "evaluated" and c.get("metric") is not None
    ]
    best_i, best = max(scored, key=lambda item: (item[1]["metric"], -item[0]))
    gain = best["metric"] - current["metric"]
    if best_i == 0 or gain <= tolerance:
        detail = "" if best_i == 0 else f" (best: {best['name']}, {gain:+.4f})"
        return 0, f"no candidate beats the current policy by more than {tolerance}{detail}"
    return best_i, f"{best['name']} beats the current policy by {gain:+.4f} > {tolerance}"


def _corpus_decide(*, job, ctx, plan: dict, base: int, total: int) -> dict:
    corpus = Corpus.objects.select_related("active_index__model_version").get(pk=plan["corpus"])
    keys = ("corpus", "query_set", "metric", "tolerance", "exclude_self")
    report = {key: plan.get(key) for key in keys}
    report["corpus_name"] = corpus.name
    try:
        serving = vector_selectors.serving_resolve(corpus=corpus)
    except ApplicationError as exc:  # the active index went away since submission
        return {**report, "skipped": exc.message, "candidates": []}
    version = ModelVersion.objects.get(pk=plan["model_version"])
    report["model_version"] = version.pk
    measure = _Measure(
        job=job,
        corpus=corpus,
        query_set=QuerySet.objects.get(pk=plan["query_set"]),
        metric=plan["metric"],
        # A job planned before the setting existed scored with the queries' own documents.
        exclude_self=plan.get("exclude_self", False),
        ctx=ctx,
        total=total,
    )
    label = f"corpus {corpus.pk}"
    candidates = [
        measure.evaluate(
            "current",
            step=base,
            index=serving.index,
            version=serving.model_version,
            compensation=serving.compensation,
        )
    ]
    candidates += _old_index_candidates(measure, serving=serving, version=version, base=base + 1)
    build = _Scaled(
        ctx,
        base=base + 4,
        units=_units(plan) - EVALUATIONS_PER_CORPUS,
        total=total,
        label=f"{label}: reindex",
    )
    record, shadow = _reindex_candidate(
        measure, serving=serving, version=version, plan=plan, progress=build
    )
    candidates.append(record)
    ctx.check_cancel()  # up to here nothing a user searches has changed
    chosen, reason = policy_choose(candidates=candidates, tolerance=plan["tolerance"])
    for i, candidate in enumerate(candidates):
        candidate["chosen"] = i == chosen
    report.update(
        {"candidates": candidates, "chosen": candidates[chosen]["name"], "reason": reason}
    )
    report["applied"] = _apply(
        job=job,
        ctx=ctx,
        corpus=corpus,
        plan=plan,
        serving=serving,
        chosen=candidates[chosen],
        shadow=shadow,
        report=report,
    )
    return report


def _apply(*, job, ctx, corpus, plan, serving, chosen: dict, shadow, report: dict) -> bool:
    reindexed = shadow is not None and chosen["name"] == "reindex"
    if shadow is not None and not (reindexed and plan["apply"]):
        # Kept (activatable by hand), but retired so that retention eventually drops it.
        VectorIndex.objects.filter(pk=shadow.pk).exclude(pk=corpus.active_index_id).update(
            state=VectorIndex.State.RETIRED, retired_at=timezone.now()
        )
    if not plan["apply"]:
        return False
    index = serving.index
    if reindexed:  # screened on the way in: a shadow build quarantines nothing itself
        index, report["screening"] = index_activate_screened(
            index=shadow, ctx=ctx, done=ctx.job.progress_done
        )
    decision = {
        **{k: v for k, v in report.items() if k != "applied"},
        "job": job.pk,
        "decided_at": timezone.now().isoformat(),
    }
    serving_policy_apply(
        corpus=corpus,
        index=index,
        query_version=ModelVersion.objects.get(pk=chosen["model_version"]),
        compensation=chosen["compensation"],
        decision=decision,
        job=job,
    )
    return True


# ------------------------------------------------------------------ the job


def policy_job_run(*, job, ctx) -> dict:
    plans = job.params["corpora"]
    total = sum(_units(plan) for plan in plans)
    finished = dict(ctx.checkpoint.get("corpora") or {})
    base = 0
    reports = []
    for plan in plans:
        key = str(plan["corpus"])
        if key not in finished:
            if plan.get("skip"):
                finished[key] = {"corpus": plan["corpus"], "skipped": plan["skip"]}
            else:
                finished[key] = _corpus_decide(job=job, ctx=ctx, plan=plan, base=base, total=total)
            ctx.progress(
                base + _units(plan),
                total=total,
                unit="steps",
                note=f"corpus {key} decided",
                checkpoint={"corpora": finished},
            )
        base += _units(plan)
        reports.append(finished[key])
    ctx.progress(total, total=total, unit="steps", note="done")
    return {
        "corpora": reports,
        "changed": [
            r["corpus"] for r in reports if r.get("applied") and r.get("chosen") != "current"
        ],
    }


# ------------------------------------------------------------------ submission helpers


def policy_schedule_submit(
    *, corpus: Corpus, allow_reindex: bool | None = None
) -> tuple[Job | None, str]:
    """Submit a policy job for `corpus` for a periodic task, as the corpus's owner; returns
    (job, "submitted") or (None, why not): no newer version, one already queued, ..."""
    params = {"corpus": corpus.pk}
    if allow_reindex is not None:
        params["allow_reindex"] = allow_reindex
    try:
        job, _ = job_submit_checked(user=corpus.owner, kind=Job.Kind.POLICY, params=params)
    except ApplicationError as exc:
        logger.info("no policy job for corpus %s: %s", corpus.pk, exc.message)
        return None, exc.message
    return job, "submitted"


def policy_after_finetune(*, job, result: dict) -> dict:
    """A finetune job with `then_policy`: submit a policy job for the new version over the
    owner's corpora (once per finetune job, also when it is retried)."""
    params = {"model_version": result["model_version"]}
    try:
        policy, _ = job_submit_checked(
            user=job.owner,
            kind=Job.Kind.POLICY,
            params=params,
            idempotency_key=f"finetune-{job.pk}-policy",
        )
    except ApplicationError as exc:
        return {"policy_job": None, "policy_error": exc.message}
    return {"policy_job": policy.pk}
