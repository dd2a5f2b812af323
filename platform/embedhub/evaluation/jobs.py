"""The `evaluate` job kind: score one index on a query set (nDCG@10, Recall@k, MRR, MAP)."""

from __future__ import annotations

from dataclasses import replace

from rest_framework import serializers

from embedhub.core.errors import ApplicationError
from embedhub.core.serializers import (
    StrictBooleanField,
    StrictChoiceField,
    StrictIntegerField,
)
from embedhub.corpora.models import Corpus
from embedhub.evaluation import selectors, services
from embedhub.evaluation.models import EvalRun, QuerySet
from embedhub.jobs.kinds import JobKind, job_kind_register
from embedhub.jobs.params import (
    owned,
    params_field,
)
from embedhub.registry.models import ModelVersion
from embedhub.vectors import compensation as qdc
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors.jobs import SearchTargetParams, version_lookup
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.selectors import Serving

MAX_K = services.MAX_K


def query_set_lookup(*, user, pk: int) -> QuerySet:
    return selectors.query_set_get(user=user, query_set_id=pk)


class EvaluateParams(SearchTargetParams):
    """The params of an evaluate job: the index, the query set, how to search."""

    query_set = owned(query_set_lookup, "query set", "judged queries of the index's corpus")
    model_version = owned(
        version_lookup,
        "model version",
        "encode the queries with this version (default: the index's own)",
        optional=True,
    )
    compensation = StrictChoiceField(
        choices=qdc.COMPENSATIONS,
        required=False,
        allow_null=True,
        help_text="auto: QDC when the query version differs from the index's; qdc; adapter "
        "(the learned compensation adapters of the versions in between); none. "
        "Default: the corpus's serving policy when evaluating a corpus (without "
        "model_version), else auto",
    )
    mode = StrictChoiceField(
        choices=EvalRun.Mode.choices,
        default=EvalRun.Mode.EXACT,
        help_text="exact (every vector) or ann (HNSW, with recall against exact)",
    )
    ef_search = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_K,
        help_text='HNSW candidate list size; only with mode "ann"',
    )
    k = StrictIntegerField(default=100, min_value=1, max_value=MAX_K, help_text="ranking depth")
    exclude_self = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="drop a query's own document from its ranking, as BEIR scores ArguAna "
        "(default: the corpus's setting, false unless set)",
    )

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        index, query_set = attrs["target"], attrs["query_set"]
        if query_set.corpus_id != index.corpus_id:
            raise serializers.ValidationError(
                {
                    "query_set": f"query set {query_set.pk} ({query_set.name!r}) belongs to "
                    f"corpus {query_set.corpus_id}, but index {index.pk} is on corpus "
                    f"{index.corpus_id}; pick a query set of the index's corpus"
                }
            )
        if attrs["mode"] == EvalRun.Mode.EXACT and attrs.get("ef_search") is not None:
            raise serializers.ValidationError(
                {"ef_search": 'only applies to mode "ann"; exact search scans every vector'}
            )
        return attrs


def _serving(params: dict) -> Serving:
    """What the evaluation measures: a named index as asked; a corpus as it serves queries
    (its serving policy), except for the version or compensation the params name."""
    index: VectorIndex = params["target"]
    version: ModelVersion | None = params.get("model_version")
    compensation = params.get("compensation")
    if params.get("index") is not None:
        return Serving(
            index=index,
            model_version=version or index.model_version,
            compensation=compensation or "auto",
        )
    serving = vector_selectors.serving_resolve(corpus=index.corpus)
    if serving.policy is None:  # no policy: as before policies existed
        serving = replace(serving, compensation="auto")
    if version is not None:
        return replace(serving, model_version=version, compensation=compensation or "auto")
    return replace(serving, compensation=compensation) if compensation else serving


def _exclude_self(params: dict, *, corpus_id: int) -> bool:
    # Fixed at submission, so a retry scores the way the first attempt did.
    given = params.get("exclude_self")
    return vector_selectors.corpus_excludes_self(corpus_id=corpus_id) if given is None else given


def evaluate_prepare(*, user, params: dict) -> tuple[dict, Corpus]:
    serving = _serving(params)
    index, version = serving.index, serving.model_version
    try:
        services.compensation_check(index=index, version=version, compensation=serving.compensation)
    except ApplicationError as exc:
        raise params_field("model_version", exc) from None
    prepared = {
        "index": index.pk,
        "query_set": params["query_set"].pk,
        "model_version": version.pk,
        "compensation": serving.compensation,
        "mode": params["mode"],
        "ef_search": params.get("ef_search"),
        "k": params["k"],
        "exclude_self": _exclude_self(params, corpus_id=index.corpus_id),
    }
    if serving.policy is not None:
        prepared["policy"] = serving.policy.pk
    return prepared, index.corpus


EVALUATE = job_kind_register(
    JobKind(
        name="evaluate",
        queue="cpu",
        params=EvaluateParams,
        prepare=evaluate_prepare,
        run=services.evaluate_job_run,
        description="Evaluate an index on a query set as trec_eval does, with drift "
        "compensation when the query encoder is newer than the index; stores an EvalRun.",
    )
)
