"""Reads on query sets and evaluation runs, scoped to the user (staff see everything)."""

from __future__ import annotations

from collections import defaultdict

from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models import QuerySet as DjangoQuerySet
from django.db.models.functions import Coalesce

from embedhub.core.errors import NotFound
from embedhub.core.selectors import owned_by
from embedhub.evaluation.models import EvalRun, Qrel, Query, QuerySet


def _count_of(model) -> Coalesce:
    rows = model.objects.filter(query_set=OuterRef("pk")).order_by().values("query_set")
    return Coalesce(
        Subquery(rows.annotate(n=Count("pk")).values("n"), output_field=IntegerField()), 0
    )


def query_set_list(*, user, corpus_id: int | None = None) -> DjangoQuerySet[QuerySet]:
    qs = owned_by(QuerySet.objects.all(), user=user).select_related("corpus")
    if corpus_id is not None:
        qs = qs.filter(corpus_id=corpus_id)
    # One subquery per count: joining both tables in one GROUP BY multiplies them (NFCorpus's
    # 2,590 train queries × 110k qrels is 285M rows, a listing that never returned).
    return qs.annotate(query_count=_count_of(Query), qrel_count=_count_of(Qrel)).order_by(
        "-created_at", "-pk"
    )


def query_set_get(*, user, query_set_id) -> QuerySet:
    """Another user's query set is a 404, not a 403, so ids don't leak."""
    try:
        return query_set_list(user=user).get(pk=int(query_set_id))
    except (QuerySet.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"query set {query_set_id} not found") from None


def query_set_queries(*, query_set: QuerySet) -> list[tuple[str, str]]:
    """(external id, text) of every query, in file order."""
    return list(
        Query.objects.filter(query_set=query_set).order_by("id").values_list("external_id", "text")
    )


def corpus_judged_queries(*, corpus_id: int):
    """(query set id, queries, qrels) of the query set that measures the corpus's int8
    quality gate (vectors/quality.py): the one named "test" (BEIR's held-out split), else
    the newest; None when the corpus has none with judgements."""
    sets = QuerySet.objects.filter(corpus_id=corpus_id, qrels__isnull=False).distinct()
    query_set = sets.filter(name="test").first() or sets.order_by("-created_at", "-pk").first()
    if query_set is None:
        return None
    return (
        query_set.pk,
        query_set_queries(query_set=query_set),
        query_set_qrels(query_set=query_set),
    )


def query_set_qrels(*, query_set: QuerySet) -> dict[str, dict[str, int]]:
    """{query id: {document id: relevance}}, the shape workers.ml.metrics.evaluate_run takes."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    rows = Qrel.objects.filter(query_set=query_set).values_list(
        "query_external_id", "document_external_id", "relevance"
    )
    for query_id, document_id, relevance in rows.iterator(chunk_size=10000):
        qrels[query_id][document_id] = relevance
    return dict(qrels)


EVAL_RUN_FILTERS = ("query_set", "index", "model_version", "compensation", "mode")


def eval_run_list(*, user, filters: dict | None = None) -> DjangoQuerySet[EvalRun]:
    qs = owned_by(EvalRun.objects.all(), user=user).select_related(
        "query_set", "index", "model_version__model"
    )
    filters = {k: v for k, v in (filters or {}).items() if k in EVAL_RUN_FILTERS and v}
    # The list never needs per_query (it can hold thousands of entries per run).
    return qs.filter(**filters).defer("per_query")


def eval_run_get(*, user, eval_run_id, with_per_query: bool = False) -> EvalRun:
    qs = eval_run_list(user=user)
    if with_per_query:
        qs = qs.defer(None)
    try:
        return qs.get(pk=int(eval_run_id))
    except (EvalRun.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"evaluation run {eval_run_id} not found") from None


def eval_run_table(*, user, query_set=None) -> list[dict]:
    """One row per evaluation run, oldest first, for a chart of nDCG@10 / Recall@100 per
    model version per query set (x: model version, series: query set × compensation)."""
    qs = eval_run_list(user=user).select_related("query_set__corpus").order_by("created_at", "pk")
    if query_set is not None:
        qs = qs.filter(query_set=query_set)
    return [
        {
            "eval_run": run.pk,
            "created_at": run.created_at,
            "query_set": run.query_set_id,
            "query_set_name": run.query_set.name,
            "corpus": run.query_set.corpus_id,
            "corpus_name": run.query_set.corpus.name,
            "model_version": run.model_version_id,
            "model_version_label": str(run.model_version),
            "index": run.index_id,
            "index_model_version": run.index.model_version_id,
            "compensation": run.compensation,
            "runtime": run.index.runtime,
            "mode": run.mode,
            "n_queries": run.n_queries,
            "ndcg@10": run.metrics.get("ndcg@10"),
            "recall@100": run.metrics.get("recall@100"),
            "metrics": run.metrics,
            "ann_recall_at_10": run.ann_recall_at_10,
            "ann_recall_at_k": run.ann_recall_at_k,
            "k": run.params.get("k"),
        }
        for run in qs
    ]
