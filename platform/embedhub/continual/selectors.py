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
from embedhub.evaluation.models import EvalRun
from embedhub.evaluation.models import QuerySet as QuerySetModel
from embedhub.jobs import selectors as job_selectors
from embedhub.jobs.models import Job
from embedhub.registry.models import ModelVersion
from embedhub.registry.selectors import model_version_visible
from embedhub.vectors import selectors as vector_selectors
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


def index_swapper_active(*, corpus: Corpus, exclude: int | None = None) -> Job | None:
    """The oldest queued or running job that may build a shadow index of this corpus and
    swap its active index: a reindex of it, or a policy job that will decide for it (a
    policy job's plan that skips the corpus leaves it alone). `exclude`: a job id left out
    (the one being retried, which is checked against the others)."""
    jobs = job_selectors.job_active_touching(
        corpus_id=corpus.pk, kinds=(Job.Kind.REINDEX, Job.Kind.POLICY)
    )
    if exclude is not None:
        jobs = jobs.exclude(pk=exclude)
    for job in jobs:
        if job.kind != Job.Kind.POLICY or _policy_decides(job=job, corpus_id=corpus.pk):
            return job
    return None


def _policy_decides(*, job: Job, corpus_id: int) -> bool:
    plans = job.params.get("corpora")
    if not plans:  # not planned per corpus: it named this one (that is how it matched)
        return True
    return any(plan.get("corpus") == corpus_id and not plan.get("skip") for plan in plans)


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


def version_newest_descendant(*, user, ancestor: ModelVersion) -> ModelVersion | None:
    """The newest ready version `user` may see that descends from `ancestor` (not
    `ancestor` itself): what a policy job tries by default."""
    visible = model_version_visible(user=user).filter(status=ModelVersion.Status.READY)
    for version in visible.exclude(pk=ancestor.pk).order_by("-created_at", "-pk"):
        if vector_selectors.version_descends(version=version, ancestor=ancestor):
            return version
    return None


def corpora_with_judgements(*, user) -> QuerySet[Corpus]:
    """`user`'s corpora (staff: theirs only, a policy job is about one account) with an
    active index and a query set holding judgements."""
    return (
        Corpus.objects.filter(
            owner=user, active_index__isnull=False, query_sets__qrels__isnull=False
        )
        .distinct()
        .order_by("pk")
    )


def policy_query_set(*, corpus: Corpus) -> QuerySetModel | None:
    """The query set a policy job measures a corpus on by default: the one named "test"
    (BEIR's held-out split), else the newest with judgements that is not named "train".
    Either way never one a version was fine-tuned on, whatever its name: that version would
    always look best on its own training queries."""
    judged = QuerySetModel.objects.filter(corpus=corpus, qrels__isnull=False).distinct()
    held_out = judged.exclude(pk__in=query_sets_trained_on(corpus=corpus))
    return (
        held_out.filter(name="test").first()
        or held_out.exclude(name="train").order_by("-created_at", "-pk").first()
    )


def query_sets_trained_on(*, corpus: Corpus) -> set[int]:
    """Ids of the corpus's query sets some fine-tune trained on (its version's provenance)."""
    ids = list(QuerySetModel.objects.filter(corpus=corpus).values_list("pk", flat=True))
    trained = ModelVersion.objects.filter(
        provenance__source="query_set", provenance__query_set__in=ids
    ).values_list("provenance__query_set", flat=True)
    return set(trained)


# ------------------------------------------------------------------ the forgetting matrix

MATRIX_OPTIONS = ("old_index_none", "old_index_qdc", "old_index_adapter", "reindexed")
MATRIX_LABELS = {
    "old_index_none": "old index, no compensation",
    "old_index_qdc": "old index + QDC",
    "old_index_adapter": "old index + adapter",
    "reindexed": "reindexed",
}


def version_chain(*, leaf: ModelVersion) -> list[ModelVersion]:
    """`leaf` and its ancestors, root first: v0 → v1 → ... → leaf."""
    chain, current = [], leaf
    while current is not None:
        chain.append(current)
        current = current.parent
    return chain[::-1]


def policy_chosen_eval_runs(*, user) -> set[int]:
    """EvalRun ids of the candidates that `user`'s policy jobs chose."""
    chosen = set()
    jobs = Job.objects.filter(owner=user, kind=Job.Kind.POLICY, status=Job.Status.SUCCEEDED)
    for result in jobs.values_list("result", flat=True):
        for corpus in (result or {}).get("corpora", []):
            for candidate in corpus.get("candidates", []):
                if candidate.get("chosen") and candidate.get("eval_run"):
                    chosen.add(candidate["eval_run"])
    return chosen


def _matrix_key(run: EvalRun, root_id: int) -> tuple[int, str] | None:
    """(query version, option) an exact EvalRun stands for in the matrix, if any."""
    index_version, version = run.index.model_version_id, run.model_version_id
    if index_version == version:
        return version, "old_index_none" if version == root_id else "reindexed"
    if index_version == root_id:
        return version, f"old_index_{run.compensation}"
    return None


def forgetting_matrix(*, user, leaf: ModelVersion) -> dict:
    """Each task's (query set's) metric for each version of leaf's lineage × serving option:
    the root's index searched by the version's queries with none / qdc / adapter, or an
    index the version built itself ("reindexed"). The latest exact EvalRun of `user` fills
    a cell; cells a policy job chose are marked."""
    chain = version_chain(leaf=leaf)
    root = chain[0]
    runs = (
        owned_by(EvalRun.objects.all(), user=user)
        .filter(mode=EvalRun.Mode.EXACT, model_version__in=chain)
        .select_related("index", "query_set__corpus")
        .defer("per_query")
        .order_by("created_at", "pk")
    )
    cells: dict[tuple, EvalRun] = {}
    tasks: dict[int, QuerySetModel] = {}
    for run in runs:
        key = _matrix_key(run, root.pk)
        if key is not None and key[1] in MATRIX_OPTIONS:
            cells[(run.query_set_id, *key)] = run  # later runs replace earlier ones
            tasks[run.query_set_id] = run.query_set
    chosen = policy_chosen_eval_runs(user=user)
    ordered = sorted(tasks.values(), key=lambda qs: (qs.corpus.name, qs.name))
    rows = []
    for version in chain:
        options = ("old_index_none",) if version.pk == root.pk else MATRIX_OPTIONS
        for option in options:
            row = []
            for task in ordered:
                run = cells.get((task.pk, version.pk, option))
                row.append(
                    {
                        "eval_run": run.pk if run else None,
                        "metrics": run.metrics if run else {},
                        "chosen": bool(run and run.pk in chosen),
                    }
                )
            label = "its own index" if version.pk == root.pk else MATRIX_LABELS[option]
            rows.append({"version": version, "option": option, "label": label, "cells": row})
    return {"chain": chain, "root": root, "tasks": ordered, "rows": rows}


def version_training_sources(*, user, versions: list[ModelVersion]) -> dict[int, dict]:
    """What each version was fine-tuned on, as far as `user` may know: the query set and
    its corpus only when they are the user's own (staff included: the page is about the
    user's own runs); a shared version trained on another account's judgements names none
    of them. {version id: {"label", "corpus_id"}}."""
    provenance = {v.pk: v.provenance or {} for v in versions}
    wanted = [p["query_set"] for p in provenance.values() if p.get("query_set") is not None]
    mine = QuerySetModel.objects.filter(owner=user, pk__in=wanted).select_related("corpus")
    own = {qs.pk: qs for qs in mine}
    return {v.pk: _training_source(v, provenance[v.pk], own, user) for v in versions}


def _training_source(version: ModelVersion, provenance: dict, own: dict, user) -> dict:
    source = provenance.get("source")
    if version.parent_id is None or source is None:
        label = ""
    elif source != "query_set":
        label = "a training-set file"
    elif (qs := own.get(provenance.get("query_set"))) is not None:
        return {"label": f"{qs.corpus.name} · {qs.name}", "corpus_id": qs.corpus_id}
    elif version.owner_id == user.pk:
        label = "a query set since deleted"
    else:
        label = "another account's judgements"
    return {"label": label, "corpus_id": None}
