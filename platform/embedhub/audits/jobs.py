"""The `audit` job kind: GASLITE adversarial passages against one index, for one concept.

Prepare resolves the concept's queries now, so the job attacks exactly what the user saw
accepted even if the query set changes later.
"""

from __future__ import annotations

from rest_framework import serializers

from embedhub.audits import selectors, services
from embedhub.core.errors import ApplicationError
from embedhub.core.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
)
from embedhub.corpora.models import Corpus
from embedhub.evaluation.jobs import query_set_lookup
from embedhub.jobs.kinds import JobKind, job_kind_register
from embedhub.jobs.params import (
    integer,
    owned,
    params_field,
)
from embedhub.vectors.jobs import SearchTargetParams

MIN_QUERIES = 4
MAX_TEXT = 2000
# One request must not buy days of GPU time. An iteration runs `grad_copies` gradient
# passes and `positions` x `candidates` scoring passes; the paper's settings (100 iterations,
# 50 copies, 20 x 128 candidates) for 10 passages are about 2.6 million of them.
MAX_MODEL_PASSES = 5_000_000
MAX_TIME_LIMIT_S = 24 * 3600


def _texts(max_length: int, help_text: str) -> serializers.ListField:
    return serializers.ListField(
        child=StrictCharField(max_length=max_length),
        required=False,
        allow_null=True,
        max_length=10_000,
        help_text=help_text,
        error_messages={"not_a_list": "must be a list of strings"},
    )


class AuditParams(SearchTargetParams):
    """The params of an audit job: the index, the concept, and the attack's budget."""

    queries = _texts(MAX_TEXT, "the concept's queries, inline (or give query_set)")
    query_set = owned(
        query_set_lookup,
        "query set",
        "take the concept's queries from this query set (with keyword or query_ids)",
        optional=True,
    )
    keyword = StrictCharField(
        required=False,
        allow_null=True,
        max_length=200,
        help_text="with query_set: the concept's queries are those whose text contains "
        "this (case-insensitive; a literal string unless keyword_regex)",
    )
    keyword_regex = StrictBooleanField(
        default=False,
        help_text="match keyword as an RE2 regular expression (linear time: no backreferences "
        "or lookaround) instead of a literal string",
    )
    query_ids = _texts(200, "with query_set: the concept's queries by id")
    concept = StrictCharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        max_length=200,
        help_text="the concept's name (default: the keyword)",
    )
    message = StrictCharField(
        max_length=MAX_TEXT,
        help_text="the adversary's text that every passage carries",
        error_messages={"blank": "required: the adversary's text that the passages carry"},
    )
    budget = integer(
        1,
        50,
        default=10,
        help_text="passages to craft (one per k-means cluster of held-in queries)",
    )
    trigger_len = integer(
        1, 200, default=30, help_text="adversarial tokens appended to the message"
    )
    iterations = integer(
        0,
        1000,
        default=30,
        help_text="optimisation iterations per passage; budget x iterations x (grad_copies + "
        f"positions x candidates) may be at most {MAX_MODEL_PASSES:,} model passes",
    )
    candidates = integer(1, 512, default=32, help_text="candidate tokens tried per position")
    positions = integer(1, 200, default=10, help_text="trigger positions visited per iteration")
    grad_copies = integer(1, 256, default=10, help_text="gradient samples averaged per iteration")
    seed = integer(0, 2**31 - 1, default=0, help_text="random seed")
    held_in = StrictFloatField(
        default=0.5,
        min_value=0.1,
        max_value=0.9,
        help_text="share of the concept's queries attacked; the rest judge the attack",
    )
    adaptive = StrictBooleanField(
        default=False,
        help_text="optimise against the detector too: place only words the corpus uses and "
        "subtract naturalness_weight x the screen's naturalness penalty from the objective",
    )
    naturalness_weight = StrictFloatField(
        default=0.05,
        min_value=0.0,
        max_value=10.0,
        help_text="with adaptive: cosine given up per robust-z unit of detectability",
    )
    time_limit_s = StrictFloatField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_TIME_LIMIT_S,
        help_text="wall-clock limit for all passages together (at most 24 hours)",
    )

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        if attrs["positions"] > attrs["trigger_len"]:
            raise serializers.ValidationError(
                {
                    "positions": f"{attrs['positions']} is more than trigger_len "
                    f"({attrs['trigger_len']}); each iteration visits distinct positions"
                }
            )
        _work_check(attrs)
        if not attrs["message"].strip():
            raise serializers.ValidationError({"message": "the adversary's text is required"})
        if attrs["target"].encoder:
            raise serializers.ValidationError(
                {
                    "index": f"index {attrs['target'].pk} was built with the "
                    f"{attrs['target'].encoder!r} test encoder: an attack on the real model "
                    "would be judged in a different space; audit an index of the model itself"
                }
            )
        _concept_source_check(attrs)
        return attrs


def _model_passes(params: dict) -> int:
    """The model passes an audit asks for: per passage and iteration, the gradient copies and
    every candidate at every visited position."""
    per_iteration = params["grad_copies"] + params["positions"] * params["candidates"]
    return params["budget"] * params["iterations"] * per_iteration


def _work_check(attrs: dict) -> None:
    passes = _model_passes(attrs)
    if passes > MAX_MODEL_PASSES:
        raise serializers.ValidationError(
            {
                "iterations": f"budget x iterations x (grad_copies + positions x candidates) "
                f"is {passes:,} model passes, over the limit of {MAX_MODEL_PASSES:,}; lower "
                "some of them"
            }
        )


def _concept_source_check(attrs: dict) -> None:
    inline, query_set = attrs.get("queries"), attrs.get("query_set")
    if inline is not None and query_set is not None:
        raise serializers.ValidationError(
            {"queries": "give the concept either as queries (inline) or as query_set, not both"}
        )
    if inline is None and query_set is None:
        raise serializers.ValidationError(
            {
                "queries": "give the concept's queries: queries (a list of query texts), or "
                "query_set with keyword (a word or phrase in the query texts) or query_ids"
            }
        )
    if query_set is not None and bool(attrs.get("keyword")) == bool(attrs.get("query_ids")):
        raise serializers.ValidationError(
            {"keyword": "with query_set, give exactly one of keyword or query_ids"}
        )
    name = attrs.get("concept") or (attrs.get("keyword") if query_set else None)
    if not name or not name.strip():
        raise serializers.ValidationError({"concept": 'give the concept a name (e.g. "vitamin D")'})


def _concept_queries(params: dict) -> list[dict]:
    if params.get("queries") is not None:
        texts = list(dict.fromkeys(q.strip() for q in params["queries"] if q.strip()))
        return [{"id": f"q{i}", "text": t} for i, t in enumerate(texts)]
    field = "keyword" if params.get("keyword") else "query_ids"
    try:
        return selectors.concept_queries(
            query_set=params["query_set"],
            keyword=params.get("keyword"),
            keyword_regex=params["keyword_regex"],
            query_ids=params.get("query_ids"),
        )
    except ApplicationError as exc:
        raise params_field(field, exc) from None


def _split_check(*, n: int, held_in: float, budget: int) -> None:
    if n < MIN_QUERIES:
        raise serializers.ValidationError(
            {
                "queries": f"the concept has {n} distinct queries; an audit needs at least "
                f"{MIN_QUERIES} (some to attack with, some held out to judge the attack)"
            }
        )
    n_in = int(round(held_in * n))
    if n_in < 1 or n_in >= n:
        raise serializers.ValidationError(
            {
                "held_in": f"{held_in} of {n} queries leaves {n_in} held-in and {n - n_in} "
                "held-out; both must be at least 1"
            }
        )
    if budget > n_in:
        raise serializers.ValidationError(
            {
                "budget": f"{budget} passages but only {n_in} held-in queries (held_in "
                f"{held_in} of {n}); each passage targets a cluster of held-in queries, so "
                "lower the budget or add queries"
            }
        )


NUMBERS = ("budget", "trigger_len", "iterations", "candidates", "positions", "grad_copies")


def audit_prepare(*, user, params: dict) -> tuple[dict, Corpus]:
    index = params["target"]
    queries = _concept_queries(params)
    _split_check(n=len(queries), held_in=params["held_in"], budget=params["budget"])
    message = params["message"].strip()
    try:
        services.passage_length_check(
            index=index, message=message, trigger_len=params["trigger_len"]
        )
    except ApplicationError as exc:
        raise params_field("message", exc) from None
    query_set = params.get("query_set")
    prepared = {
        "index": index.pk,
        "concept": (params.get("concept") or params.get("keyword")).strip(),
        "message": message,
        "queries": queries,
        "query_set": query_set.pk if query_set else None,
        "keyword": params.get("keyword") or None,
        "keyword_regex": params["keyword_regex"],
        **{name: params[name] for name in NUMBERS},
        "seed": params["seed"],
        "held_in": params["held_in"],
        "time_limit_s": params.get("time_limit_s"),
        "adaptive": params["adaptive"],
        "naturalness_weight": params["naturalness_weight"],
    }
    return prepared, index.corpus


AUDIT = job_kind_register(
    JobKind(
        name="audit",
        queue="gpu",
        params=AuditParams,
        prepare=audit_prepare,
        run=services.audit_job_run,
        description="Craft GASLITE adversarial passages for a concept against one index and "
        "measure how often they reach the top 10 of held-out queries (never written to the "
        "index).",
    )
)
