"""The `finetune` and `reindex` job kinds: continual learning, end to end."""

from __future__ import annotations

import math
from pathlib import Path

from rest_framework import serializers

from embedhub.continual import selectors
from embedhub.continual.services import finetune, policy, reindex
from embedhub.core.errors import ApplicationError, Conflict
from embedhub.core.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictFloatField,
)
from embedhub.corpora.models import Corpus
from embedhub.evaluation.jobs import query_set_lookup
from embedhub.evaluation.models import Qrel
from embedhub.jobs.kinds import JobKind, job_kind_register
from embedhub.jobs.models import Job
from embedhub.jobs.params import (
    ParamsSerializer,
    integer,
    number,
    owned,
    params_field,
)
from embedhub.registry import training_sets
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors.jobs import (
    IndexOptionsParams,
    corpus_lookup,
    index_options_resolve,
    shard_size_field,
    version_lookup,
)
from embedhub.vectors.models import VectorIndex
from workers.ml.metrics import METRICS
from workers.ml.training import FinetuneConfig

MAX_PAIRS = 2_000_000
# One request must not buy days of GPU time: at most this many optimizer steps, and at most
# this many (step x batch_size) training examples, whether set by max_steps or by epochs.
MAX_STEPS = 100_000
MAX_EXAMPLES = 5_000_000
GATE_MAX_TOLERANCE = 0.1  # nDCG@10 points as a fraction: 0.1 lets a swap lose 10 points


# ------------------------------------------------------------------ finetune


class FinetuneConfigParams(ParamsSerializer):
    """Training settings; an unset one takes workers.ml.training.FinetuneConfig's default."""

    lr = number(1e-8, 1e-2, "AdamW learning rate (default 2e-5)")
    epochs = integer(
        1,
        100,
        "passes over the pairs (default 1); the steps they make obey the max_steps bounds",
    )
    max_steps = integer(
        1,
        MAX_STEPS,
        "exactly this many optimizer steps (default: epochs x pairs / batch_size); at most "
        f"{MAX_STEPS:,} steps and {MAX_EXAMPLES:,} examples (steps x batch_size) either way",
    )
    batch_size = integer(2, 1024, "pairs per step; the others in a batch are its negatives")
    seed = integer(0, 2**31 - 1, "shuffling and initialisation seed")
    max_tokens = integer(8, 512, "tokens kept per text while training")
    temperature = number(
        0.005,
        1.0,
        "contrastive temperature: logits are cosine / temperature (default "
        f"{FinetuneConfig.temperature}). Sharper pulls each query harder onto its judged "
        "positive; on corpora with many weak judgements per query 0.05 damaged less",
    )
    distill_weight = number(0.0, 100.0, "weight of the embedding-distillation term")
    negatives_per_query = integer(0, 64, "hard negatives mined from the parent's index")
    negatives_skip_top = integer(
        0,
        100,
        "skip the parent's top non-positive documents when mining (often unjudged "
        "positives; default 3)",
    )
    adapter_documents = integer(
        0,
        100_000,
        "documents sampled from your corpora indexed by the parent to fit the compensation "
        "adapter on, besides the training queries (default 1000; their parent vectors come "
        "from the index, only the child encodes them)",
    )
    corpus_adapter_documents = integer(
        0,
        20_000,
        "documents per corpus the child embeds to fit that corpus's own adapter (default "
        "5000; 0: no corpus adapters). The more of a corpus it sees, the closer the old "
        "index comes to a reindex",
    )
    checkpoint_every = integer(1, MAX_STEPS, "steps between resumable checkpoints")
    warmup_steps = integer(0, MAX_STEPS, "linear learning-rate warm-up")


class FinetuneParams(ParamsSerializer):
    """The params of a finetune job: the parent, one source of pairs, training settings."""

    parent = owned(version_lookup, "model version", "the version to fine-tune")
    query_set = owned(
        query_set_lookup,
        "query set",
        "train on its judgements (one source of pairs: this, training_set or pairs_path)",
        optional=True,
    )
    training_set = StrictCharField(
        required=False,
        allow_null=True,
        max_length=64,
        help_text="the sha256 returned by POST /training-sets/ (JSONL query/positive pairs)",
    )
    pairs_path = StrictCharField(
        required=False,
        allow_null=True,
        max_length=1000,
        help_text="a JSONL file on the server (staff only)",
    )
    corpus = owned(
        corpus_lookup,
        "corpus",
        "mine hard negatives from the parent's index of this corpus",
        optional=True,
    )
    config = FinetuneConfigParams(required=False, help_text="training settings")
    then_policy = StrictBooleanField(
        default=False,
        help_text="when the child is registered, submit a policy job for it over your corpora "
        "that have a query set (its id is in this job's result)",
    )

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        given = [k for k in ("query_set", "training_set", "pairs_path") if attrs.get(k)]
        if len(given) != 1:
            raise serializers.ValidationError(
                "give exactly one source of training pairs: query_set (an evaluation query "
                "set with judgements), training_set (the id of an uploaded JSONL) or "
                "pairs_path"
            )
        query_set = attrs.get("query_set")
        if query_set is not None:
            if not Qrel.objects.filter(query_set=query_set, relevance__gt=0).exists():
                raise serializers.ValidationError(
                    {"query_set": f"query set {query_set.pk} has no positive judgements"}
                )
            corpus = attrs.setdefault("corpus", None)
            # The pairs' positives and their known-positive mask are documents of the query
            # set's corpus: negatives mined from another corpus's index would mean nothing.
            if corpus is not None and corpus.pk != query_set.corpus_id:
                raise serializers.ValidationError(
                    {
                        "corpus": f"corpus {corpus.pk} is not the corpus of query set "
                        f"{query_set.pk} ({query_set.corpus_id}); leave it out or name that one"
                    }
                )
        return attrs


def _pairs_file(*, user, params: dict) -> Path:
    field = "training_set" if params.get("training_set") else "pairs_path"
    try:
        if field == "training_set":
            return training_sets.training_set_path(user=user, sha256=params["training_set"])
        return training_sets.pairs_path_check(user=user, path=params["pairs_path"])
    except ApplicationError as exc:
        raise params_field(field, exc) from None


def _training_steps_check(*, config: dict, n_pairs: int) -> None:
    """The run's optimizer steps, known once the pairs are counted, within the bounds."""
    defaults = FinetuneConfig()
    batch_size = config.get("batch_size") or defaults.batch_size
    if config.get("max_steps") is not None:
        field, steps = "max_steps", config["max_steps"]
    else:
        epochs = config.get("epochs") or defaults.epochs
        field, steps = "epochs", epochs * math.ceil(n_pairs / batch_size)
    examples = steps * batch_size
    if steps > MAX_STEPS or examples > MAX_EXAMPLES:
        raise serializers.ValidationError(
            {
                "config": {
                    field: f"{steps:,} steps of batch_size {batch_size} ({n_pairs:,} pairs) "
                    f"are {examples:,} examples; at most {MAX_STEPS:,} steps and "
                    f"{MAX_EXAMPLES:,} examples: lower epochs, max_steps or batch_size"
                }
            }
        )


def finetune_prepare(*, user, params: dict) -> tuple[dict, Corpus | None]:
    query_set = params.get("query_set")
    corpus = params.get("corpus") or (query_set.corpus if query_set else None)
    config = {k: v for k, v in (params.get("config") or {}).items() if v is not None}
    if query_set is not None:
        source = {"query_set": query_set.pk}
        # Every positive judgement is at most one pair (unknown documents are skipped).
        n_pairs = Qrel.objects.filter(query_set=query_set, relevance__gt=0).count()
    else:
        path = _pairs_file(user=user, params=params)
        # Read now, so a malformed file is a 400 naming its line, not a failed job.
        pairs = training_sets.pairs_read(source=path, file=path.name)
        if len(pairs) > MAX_PAIRS:
            raise serializers.ValidationError(
                {"training_set": f"{path.name}: {len(pairs)} pairs; at most {MAX_PAIRS}"}
            )
        source = {"pairs_path": str(path)}
        n_pairs = len(pairs)
    _training_steps_check(config=config, n_pairs=n_pairs)
    prepared = {
        "parent": params["parent"].pk,
        **source,
        "corpus": corpus.pk if corpus else None,
        "config": config,
        "then_policy": params.get("then_policy", False),
    }
    return prepared, corpus


def finetune_run(*, job, ctx) -> dict:
    """The fine-tune, then (when asked) the policy job that decides whether to serve it."""
    result = finetune.finetune_job_run(job=job, ctx=ctx)
    if job.params.get("then_policy"):
        result = {**result, **policy.policy_after_finetune(job=job, result=result)}
    return result


FINETUNE = job_kind_register(
    JobKind(
        name="finetune",
        queue="gpu",
        params=FinetuneParams,
        prepare=finetune_prepare,
        run=finetune_run,
        description="Fine-tune a child model version from its parent on (query, positive) "
        "pairs with embedding distillation; registers it with its lineage, drift vector and "
        "learned compensation adapter.",
    )
)


# ------------------------------------------------------------------ reindex


class GateParams(ParamsSerializer):
    """Swap the shadow in only if nDCG@10 on the query set drops at most `tolerance`."""

    query_set = owned(query_set_lookup, "query set", "a query set of the corpus")
    tolerance = StrictFloatField(
        default=reindex.DEFAULT_TOLERANCE,
        min_value=0.0,
        max_value=GATE_MAX_TOLERANCE,
        help_text="how much nDCG@10 the new index may lose (0.01 = 1 point)",
    )


class ReindexParams(IndexOptionsParams):
    """The params of a reindex job; unset index options are the active index's."""

    corpus = owned(corpus_lookup, "corpus", "the corpus")
    model_version = owned(
        version_lookup,
        "model version",
        "default: the newest ready version of the active index's model",
        optional=True,
    )
    model_name = StrictCharField(
        required=False,
        allow_null=True,
        max_length=200,
        help_text="switch to the newest ready version of this model",
    )
    only_gated = StrictBooleanField(
        default=False, help_text="only versions that passed a reindex gate"
    )
    gate = GateParams(
        required=False,
        allow_null=True,
        help_text="swap only if nDCG@10 on this query set drops no more than tolerance",
    )

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        gate, corpus = attrs.get("gate"), attrs["corpus"]
        if gate and gate["query_set"].corpus_id != corpus.pk:
            raise serializers.ValidationError(
                {
                    "gate": {
                        "query_set": f"query set {gate['query_set'].pk} belongs to corpus "
                        f"{gate['query_set'].corpus_id}, not to corpus {corpus.pk}"
                    }
                }
            )
        if gate and corpus.active_index_id is None:
            raise serializers.ValidationError(
                {"gate": "the corpus has no active index to compare with"}
            )
        return attrs


def _index_swap_check(*, corpus: Corpus, exclude: int | None = None) -> None:
    """Refuse a second job that may build a shadow index of `corpus` and swap it in: a
    reindex and a policy job (or two of either) would race for the active index. Called
    under the corpus's row lock, so of two simultaneous submissions (or a submission and a
    retry) the second sees the first. `exclude`: the job being retried."""
    blocker = selectors.index_swapper_active(corpus=corpus, exclude=exclude)
    if blocker is not None:
        raise _swap_conflict(blocker=blocker, corpus=corpus)


def _swap_conflict(*, blocker: Job, corpus: Corpus) -> Conflict:
    return Conflict(
        f"{blocker.kind} job {blocker.pk} covering corpus {corpus.pk} is already "
        f"{blocker.status}; it may build a shadow index and swap the active one, so "
        "wait for it or cancel it",
        code=f"{blocker.kind}_running",
    )


def _index_swap_retry_check(*, job: Job, corpus_ids: list[int]) -> None:
    """Before `job` (a reindex or a policy job) is queued again: the corpora it may swap,
    row-locked in pk order like a submission locks them, have no other such job active (one
    may have been let in while this one had failed). A corpus deleted since is skipped."""
    corpora = Corpus.objects.filter(pk__in=corpus_ids).select_for_update().order_by("pk")
    for corpus in corpora:
        _index_swap_check(corpus=corpus, exclude=job.pk)


def _inherited(active: VectorIndex | None) -> dict:
    """A shadow is built like the active index unless the params say otherwise."""
    if active is None:
        return {}
    keys = ("storage", "chunking", "encoder", "runtime", "chunk_window", "chunk_overlap")
    return {key: getattr(active, key) for key in keys}


def reindex_prepare(*, user, params: dict) -> tuple[dict, Corpus]:
    # Submission runs this in its transaction: the corpus row lock (which schedules take
    # too) holds until the job row commits, so of two simultaneous submissions the second
    # sees the first's job below. The corpus is re-read under the lock.
    corpus = Corpus.objects.select_for_update().get(pk=params["corpus"].pk)
    active = corpus.active_index
    try:
        version = params.get("model_version") or selectors.reindex_target_version(
            corpus=corpus, model_name=params.get("model_name"), only_gated=params["only_gated"]
        )
    except ApplicationError as exc:
        raise params_field("model_version", exc) from None
    options = index_options_resolve(params=params, version=version, inherited=_inherited(active))
    if (
        active is not None
        and active.model_version_id == version.pk
        and all(getattr(active, key) == value for key, value in options.items())
    ):
        raise Conflict(
            f"corpus {corpus.pk} is already indexed with {version} (index {active.pk})",
            code="up_to_date",
        )
    _index_swap_check(corpus=corpus)
    gate = params.get("gate")
    shadow = reindex.reindex_shadow(user=user, corpus=corpus, version=version, options=options)
    prepared = {
        "corpus": corpus.pk,
        "model_version": version.pk,
        "index": shadow.pk,
        "previous_index": active.pk if active else None,
        "gate": {"query_set": gate["query_set"].pk, "tolerance": gate["tolerance"]}
        if gate
        else None,
        "batch_size": params.get("batch_size"),
        "force": params.get("force", False),
        "shard_size": params.get("shard_size"),
    }
    return prepared, corpus


def reindex_before_retry(*, job: Job) -> None:
    _index_swap_retry_check(job=job, corpus_ids=[job.params.get("corpus") or job.corpus_id])


REINDEX = job_kind_register(
    JobKind(
        name="reindex",
        queue="gpu",
        params=ReindexParams,
        prepare=reindex_prepare,
        run=reindex.reindex_job_run,
        before_retry=reindex_before_retry,
        description="Build a shadow index of a corpus with a newer model version, optionally "
        "gate it on nDCG@10, then swap it in atomically (the old index is kept for rollback).",
    )
)


# ------------------------------------------------------------------ policy

POLICY_MAX_TOLERANCE = 1.0  # a metric in [0, 1]: 1 keeps the current policy whatever happens


class PolicyParams(ParamsSerializer):
    """The params of a policy job; unset settings are each corpus's (its ServingPolicy)."""

    corpus = owned(
        corpus_lookup,
        "corpus",
        "decide for this corpus (default: each of your corpora with an active index and a "
        "judged query set)",
        optional=True,
    )
    query_set = owned(
        query_set_lookup,
        "query set",
        'measure on this query set of the corpus (default: the one named "test", else the '
        'newest not named "train"); only with corpus',
        optional=True,
    )
    model_version = owned(
        version_lookup,
        "model version",
        "the candidate version (default: the newest ready version you may see that descends "
        "from the version serving the corpus)",
        optional=True,
    )
    allow_reindex = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="also build a shadow index with the candidate version and measure it (a "
        "full re-embed; default: the corpus's setting, true unless turned off)",
    )
    metric = StrictChoiceField(
        choices=METRICS,
        required=False,
        allow_null=True,
        help_text="what decides (default: the corpus's setting, ndcg@10)",
    )
    tolerance = StrictFloatField(
        required=False,
        allow_null=True,
        min_value=0.0,
        max_value=POLICY_MAX_TOLERANCE,
        help_text="keep the current policy unless a candidate beats it by more than this "
        "(default: the corpus's setting, 0.01)",
    )
    exclude_self = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="drop a query's own document from its ranking in every candidate's "
        "evaluation, as BEIR scores ArguAna (default: the corpus's setting, false)",
    )
    apply = StrictBooleanField(
        default=True, help_text="false: measure and report only, change nothing"
    )
    batch_size = integer(1, 4096, "documents per forward pass of the shadow build")
    shard_size = shard_size_field("each shadow build")

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        corpus, query_set = attrs.get("corpus"), attrs.get("query_set")
        if query_set is not None and corpus is None:
            raise serializers.ValidationError({"query_set": "give corpus with query_set"})
        if query_set is not None and query_set.corpus_id != corpus.pk:
            raise serializers.ValidationError(
                {"query_set": f"query set {query_set.pk} belongs to corpus {query_set.corpus_id}"}
            )
        if query_set is not None and not Qrel.objects.filter(query_set=query_set).exists():
            raise serializers.ValidationError(
                {"query_set": f"query set {query_set.pk} has no judgements"}
            )
        return attrs


def _policy_problem(*, corpus: Corpus, query_set, serving, version) -> tuple[str, str] | None:
    """(field, why) when there is nothing to decide for this corpus."""
    if serving is None:
        return "corpus", f"corpus {corpus.pk} has no active index yet"
    if query_set is None:
        return "corpus", (
            f'corpus {corpus.pk} has no held-out judged query set (one not named "train" '
            "that no version was fine-tuned on)"
        )
    if version is None:
        return "model_version", (
            f"no ready version descends from {serving.model_version}, which serves corpus "
            f"{corpus.pk}"
        )
    return None


def _policy_plan(*, user, corpus: Corpus, params: dict, named: bool) -> dict:
    """What the job does for one corpus, fixed at submission; a corpus the job was asked
    about by name gets an error instead of a skip (nothing to decide, or another job that
    may swap its index is active: a run over all corpora must not fail for one busy one)."""
    plan = {"corpus": corpus.pk}
    query_set = params.get("query_set") or selectors.policy_query_set(corpus=corpus)
    serving = vector_selectors.serving_resolve(corpus=corpus) if corpus.active_index_id else None
    version = params.get("model_version")
    if serving is not None and version is None:
        version = selectors.version_newest_descendant(user=user, ancestor=serving.model_version)
    problem = _policy_problem(corpus=corpus, query_set=query_set, serving=serving, version=version)
    if problem and named:
        raise serializers.ValidationError({problem[0]: problem[1]})
    if problem:
        return {**plan, "skip": problem[1]}
    blocker = selectors.index_swapper_active(corpus=corpus)
    if blocker is not None and named:
        raise _swap_conflict(blocker=blocker, corpus=corpus)
    if blocker is not None:  # a run over all corpora goes on with the others
        return {**plan, "skip": f"{blocker.kind} job {blocker.pk} is {blocker.status}"}
    defaults = vector_selectors.serving_policy_settings(corpus=corpus)

    def given(key: str):
        return params[key] if params.get(key) is not None else getattr(defaults, key)

    return {
        **plan,
        "query_set": query_set.pk,
        "model_version": version.pk,
        "metric": given("metric"),
        "tolerance": given("tolerance"),
        "allow_reindex": given("allow_reindex"),
        "exclude_self": given("exclude_self"),
        "documents": corpus.documents.count(),
        "apply": params["apply"],
        "batch_size": params.get("batch_size"),
        "shard_size": params.get("shard_size"),
    }


def policy_prepare(*, user, params: dict) -> tuple[dict, Corpus | None]:
    named = params.get("corpus")
    # Locked in submission's transaction: two submissions for one corpus see each other.
    wanted = [named.pk] if named else selectors.corpora_with_judgements(user=user).values("pk")
    corpora = list(Corpus.objects.filter(pk__in=wanted).select_for_update().order_by("pk"))
    if not corpora:
        raise serializers.ValidationError(
            {"corpus": "none of your corpora has an active index and a judged query set"}
        )
    plans = [
        _policy_plan(user=user, corpus=corpus, params=params, named=bool(named))
        for corpus in corpora
    ]
    return {"corpora": plans}, named


def policy_before_retry(*, job: Job) -> None:
    # A skipped corpus stays skipped on a retry: only those the job decides for count.
    plans = job.params.get("corpora")
    if not plans:  # not planned per corpus: it named its one
        plans = [{"corpus": job.corpus_id}] if job.corpus_id else []
    corpus_ids = [plan["corpus"] for plan in plans if not plan.get("skip")]
    _index_swap_retry_check(job=job, corpus_ids=corpus_ids)


POLICY = job_kind_register(
    JobKind(
        name="policy",
        queue="gpu",
        params=PolicyParams,
        prepare=policy_prepare,
        run=policy.policy_job_run,
        before_retry=policy_before_retry,
        description="Decide each corpus's serving policy: evaluate the current one, the "
        "candidate version's queries on the current index (compensation none, qdc, adapter) "
        "and, where allowed, a shadow reindex; apply the best by the corpus's metric when it "
        "beats the current one by more than the tolerance. Every candidate is an EvalRun. A "
        "large shadow build splits into shard jobs (listed under the job), one set per corpus.",
    )
)
