"""The `embed` job kind: embed a corpus into a vector index (created or reused)."""

from __future__ import annotations

import math

from django.conf import settings
from rest_framework import serializers

from embedhub.core.errors import ApplicationError
from embedhub.core.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictIntegerField,
)
from embedhub.corpora.models import Corpus
from embedhub.jobs.kinds import JobKind, job_kind_register
from embedhub.jobs.params import (
    ParamsSerializer,
    owned,
    params_field,
)
from embedhub.registry.models import ModelVersion
from embedhub.registry.selectors import model_version_resolve
from embedhub.registry.services import model_version_default
from embedhub.vectors import selectors, services
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.quality import QUALITY_MAX_LOSS_POINTS
from workers.ml.encoder import fake_encoder_parse

# "fake" / "fake:<dim>" / "fake:<dim>@<ms>ms": the deterministic test encoder (the last
# sleeps per batch, an accelerator stand-in). HNSW indexes hold at most 2,000 dimensions of
# `vector` in pgvector, so larger fakes could never be searched.
MAX_DIMENSION = 2000
MIN_CHUNK_WINDOW = 16
MAX_CHUNK_WINDOW = 8192
# The overlap the largest window allows (a stride of a quarter window): a bound that holds
# whatever the chunking, so a value no index could use is refused as such.
MAX_CHUNK_OVERLAP = MAX_CHUNK_WINDOW - math.ceil(MAX_CHUNK_WINDOW / 4)
BUILD_OPTIONS = ("storage", "chunking", "encoder", "runtime")
CHUNK_OPTIONS = ("chunk_window", "chunk_overlap")  # used only with chunking=chunk
CHUNK_ONLY = "applies only with chunking: chunk"


def corpus_lookup(*, user, pk: int) -> Corpus:
    return selectors.corpus_for_user(user=user, corpus_id=pk)


def index_lookup(*, user, pk: int) -> VectorIndex:
    return selectors.index_get(user=user, index_id=pk)


def version_lookup(*, user, pk: int) -> ModelVersion:
    return model_version_resolve(user=user, version_id=pk)


FAKE_REFUSED = (
    "encoder overrides are turned off on this server (EMBEDHUB_ALLOW_FAKE_ENCODER); leave "
    "encoder empty to embed with the model version"
)


def encoder_validate(value: str) -> str:
    fake = fake_encoder_parse(value) if value else None
    if value and fake is None:
        raise serializers.ValidationError(
            'only "fake", "fake:<dim>" or "fake:<dim>@<ms>ms" may override the model version '
            "(job-mechanics tests and benchmarks)"
        )
    if fake and not 1 <= fake[0] <= MAX_DIMENSION:
        raise serializers.ValidationError(f"fake dimension must be 1..{MAX_DIMENSION}")
    if value and not settings.EMBEDHUB["ALLOW_FAKE_ENCODER"]:
        raise serializers.ValidationError(FAKE_REFUSED)
    return value


def _fake_encoder_check(*, encoder: str, field: str, source: str) -> None:
    """Refuse work that would run the fake encoder where the setting is off; `source` says
    where the encoder came from (an index built while the setting was on)."""
    if encoder and not settings.EMBEDHUB["ALLOW_FAKE_ENCODER"]:
        raise serializers.ValidationError(
            {field: f"{source} uses the {encoder!r} test encoder: {FAKE_REFUSED}"}
        )


def shard_size_field(build: str = "the build") -> StrictIntegerField:
    """`shard_size`, alike in every kind that builds an index (embed, reindex, policy)."""
    return StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=10_000_000,
        help_text=f"split {build} into shard jobs of this many documents, which any number of "
        "workers run at once, when more than this many are pending (default "
        "EMBEDHUB_SHARD_SIZE, 50,000; 0 never shards)",
    )


class IndexOptionsParams(ParamsSerializer):
    """How an index is built; shared by `embed` and `reindex`. Unset fields are absent from
    the validated data, so a reindex can inherit them from the active index."""

    storage = StrictChoiceField(
        choices=VectorIndex.Storage.choices,
        required=False,
        help_text="vector (float4) or halfvec (float2, half the space); default vector",
    )
    chunking = StrictChoiceField(
        choices=VectorIndex.Chunking.choices,
        required=False,
        help_text="truncate long documents (default) or embed overlapping token windows",
    )
    chunk_window = StrictIntegerField(
        required=False,
        min_value=MIN_CHUNK_WINDOW,
        max_value=MAX_CHUNK_WINDOW,
        help_text="tokens per window with chunking=chunk (default 128; at most the model's)",
    )
    chunk_overlap = StrictIntegerField(
        required=False,
        min_value=0,
        max_value=MAX_CHUNK_OVERLAP,
        help_text="tokens shared by consecutive windows (default 32); the stride (window - "
        "overlap) must be at least a quarter of the window, and a document keeps at most "
        "EMBEDHUB_MAX_CHUNKS_PER_DOCUMENT windows",
    )
    encoder = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=16,
        validators=[encoder_validate],
        help_text='"" = the model version; "fake" / "fake:<dim>" for job-mechanics tests, '
        '"fake:<dim>@<ms>ms" sleeps per batch like an accelerator (only where the server '
        "allows it: EMBEDHUB_ALLOW_FAKE_ENCODER)",
    )
    batch_size = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=4096,
        help_text="documents per forward pass (default: 32 on CPU, 256 on GPU)",
    )
    runtime = StrictChoiceField(
        choices=VectorIndex.Runtime.choices,
        required=False,
        help_text="what encodes the documents and the index's queries: torch (default; fp32 "
        "on CPU, fp16/bf16 on GPU), onnx (ONNX Runtime fp32 on CPU, same vectors as torch) or "
        "onnx-int8 (per-channel int8 on CPU: faster, slightly different vectors; a quality "
        "gate measures the loss against fp32 and refuses more than 0.5 nDCG@10 points)",
    )
    shard_size = shard_size_field()
    force = StrictBooleanField(
        required=False,
        help_text="keep an onnx-int8 index even when its quality gate measures more than "
        f"{QUALITY_MAX_LOSS_POINTS} nDCG@10 points lost against fp32 (default false)",
    )


def index_options_resolve(
    *, params: dict, version: ModelVersion, inherited: dict | None = None
) -> dict:
    """The index options for `params` over `inherited` ones, checked against the version."""
    given = {k: params[k] for k in (*BUILD_OPTIONS, *CHUNK_OPTIONS) if k in params}
    merged = {
        "storage": VectorIndex.Storage.VECTOR,
        "chunking": VectorIndex.Chunking.TRUNCATE,
        "encoder": "",
        "runtime": VectorIndex.Runtime.TORCH,
        **(inherited or {}),
        **given,
    }
    options = {k: merged[k] for k in BUILD_OPTIONS}
    if "encoder" not in given:  # an inherited override obeys the setting like a given one
        _fake_encoder_check(encoder=options["encoder"], field="encoder", source="the active index")
    if options["encoder"] and options["runtime"] != VectorIndex.Runtime.TORCH:
        raise serializers.ValidationError(
            {"runtime": "the fake test encoder has no model to run on another runtime: use torch"}
        )
    if merged["chunking"] != VectorIndex.Chunking.CHUNK:
        _chunk_options_refuse(given=given)
        return options
    window = merged.get("chunk_window") or 128
    overlap = merged.get("chunk_overlap", 32)
    if window > version.max_tokens:
        raise serializers.ValidationError(
            {"chunk_window": f"{window} is more than {version}'s {version.max_tokens} tokens"}
        )
    _stride_check(window=window, overlap=overlap)
    return {**options, "chunk_window": window, "chunk_overlap": overlap}


def _chunk_options_refuse(*, given: dict) -> None:
    """A window or overlap for an index that truncates would be dropped unseen: refused by
    name instead. Only given ones: a reindex inherits the active index's stored values."""
    errors = {key: CHUNK_ONLY for key in CHUNK_OPTIONS if key in given}
    if errors:
        raise serializers.ValidationError(errors)


def quality_refusal_check(*, index: VectorIndex, field: str) -> None:
    """Refuse at submission what the quality gate already refused for this index: its
    vectors are stored, so a new job would measure the same loss minutes later."""
    quality = index.quality or {}
    if quality.get("passed") is False and not quality.get("forced"):
        raise serializers.ValidationError(
            {
                field: f"index {index.pk}: {quality.get('verdict', 'the quality gate refused it')}; "
                "pass force: true to keep it anyway, or choose another runtime"
            }
        )


def _stride_check(*, window: int, overlap: int) -> None:
    # Each window advances by window - overlap tokens; a tiny stride stores nearly one
    # vector per token, so a quarter of the window is the least it may advance.
    max_overlap = window - math.ceil(window / 4)
    if overlap > max_overlap:
        raise serializers.ValidationError(
            {
                "chunk_overlap": f"{overlap} leaves a stride of {window - overlap} tokens; with "
                f"chunk_window {window} the overlap may be at most {max_overlap} (the stride "
                "must be at least a quarter of the window)"
            }
        )


class EmbedParams(IndexOptionsParams):
    """The params of an embed job: the corpus, the version, and how the index is built."""

    corpus = owned(corpus_lookup, "corpus", "the corpus to embed")
    model_version = owned(
        version_lookup, "model version", "default: the bundled base model", optional=True
    )
    index = owned(
        index_lookup,
        "index",
        "re-embed into this index of the corpus (default: the matching one, or new)",
        optional=True,
    )
    activate = StrictBooleanField(
        required=False,
        allow_null=True,
        help_text="make it the corpus's active index (default: only if it has none)",
    )


def embed_prepare(*, user, params: dict) -> tuple[dict, Corpus]:
    """Resolve the target index (reusing a matching one, so a second embed job on the same
    corpus × version only embeds what changed); create it only when all checks passed."""
    corpus = params["corpus"]
    if not selectors.corpus_document_count(corpus_id=corpus.pk):
        raise serializers.ValidationError(
            {"corpus": f"corpus {corpus.pk} ({corpus.name!r}) has no documents; upload some first"}
        )
    index = params.get("index")
    version = params.get("model_version") or (index.model_version if index else None)
    version = version or _default_version()
    if index is not None:
        _check_target(index=index, corpus=corpus, version=version)
        _target_options_check(index=index, params=params)
        _fake_encoder_check(encoder=index.encoder, field="index", source=f"index {index.pk}")
    else:
        options = index_options_resolve(params=params, version=version)
        index = selectors.index_matching(corpus=corpus, model_version=version, **options)
        index = index or services.index_create(
            owner=user, corpus=corpus, model_version=version, **options
        )
    if not params.get("force"):
        quality_refusal_check(index=index, field="runtime")
    prepared = {
        "corpus": corpus.pk,
        "model_version": version.pk,
        "index": index.pk,
        "batch_size": params.get("batch_size"),
        "activate": params.get("activate"),
        "force": params.get("force", False),
        "shard_size": params.get("shard_size"),
    }
    return prepared, corpus


def _default_version() -> ModelVersion:
    """The staff's default model (Registry settings), never "the newest version"."""
    try:
        return model_version_default()
    except ApplicationError as exc:  # the setting names a version that is not ready
        raise params_field("model_version", exc) from None


def _check_target(*, index: VectorIndex, corpus: Corpus, version: ModelVersion) -> None:
    if index.corpus_id != corpus.pk:
        raise serializers.ValidationError(
            {"index": f"index {index.pk} belongs to corpus {index.corpus_id}, not {corpus.pk}"}
        )
    if index.model_version_id != version.pk:
        raise serializers.ValidationError(
            {"index": f"index {index.pk} is built with model version {index.model_version_id}"}
        )
    if index.state == VectorIndex.State.DROPPED:
        raise serializers.ValidationError({"index": f"index {index.pk} was dropped"})


def _target_options_check(*, index: VectorIndex, params: dict) -> None:
    """An embed into a given index builds it as it was made: an option that says otherwise
    would be dropped unseen, so it is refused by name (one that agrees is fine)."""
    errors = {}
    for key in (*BUILD_OPTIONS, *CHUNK_OPTIONS):
        built = getattr(index, key)
        if key not in params or params[key] == built:
            continue
        if key in CHUNK_OPTIONS and index.chunking != VectorIndex.Chunking.CHUNK:
            errors[key] = f"{CHUNK_ONLY} (index {index.pk} truncates)"
        else:
            errors[key] = (
                f"index {index.pk} is built with {key} {str(built)!r}; leave {key} out, or leave "
                "index out to embed into a matching or new index"
            )
    if errors:
        raise serializers.ValidationError(errors)


def embed_run(*, job, ctx) -> dict:
    index = VectorIndex.objects.select_related("corpus", "model_version").get(
        pk=job.params["index"]
    )
    shard = job.params.get("shard")
    if shard is not None:  # one shard of a sharded embed or reindex (see jobs/sharding.py)
        return services.index_shard_embed(
            index=index,
            ctx=ctx,
            lo=shard["lo"],
            hi=shard["hi"],
            batch_size=job.params.get("batch_size"),
        )
    return services.index_build(
        index=index,
        ctx=ctx,
        batch_size=job.params.get("batch_size"),
        activate=job.params.get("activate"),
        force=job.params.get("force", False),
        shard_size=job.params.get("shard_size"),
    )


EMBED = job_kind_register(
    JobKind(
        name="embed",
        queue="gpu",
        params=EmbedParams,
        prepare=embed_prepare,
        run=embed_run,
        description="Embed every document of a corpus whose vector is missing or stale into "
        "a pgvector index, then build its HNSW graph. A large build splits into shard jobs "
        "(document-id ranges, listed under the job) that any number of workers run at once.",
    )
)


class SearchTargetParams(ParamsSerializer):
    """Which index a job searches: an index by id, or a corpus's active index. Shared by
    the kinds that search (`evaluate`, `audit`)."""

    corpus = owned(corpus_lookup, "corpus", "search the corpus's active index", optional=True)
    index = owned(
        index_lookup, "index", "search this index (a built or retired one)", optional=True
    )

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        attrs["target"] = search_target_resolve(
            corpus=attrs.get("corpus"), index=attrs.get("index")
        )
        return attrs


def search_target_resolve(*, corpus: Corpus | None, index: VectorIndex | None) -> VectorIndex:
    """The searchable index that `corpus` / `index` name, or an error on the field."""
    if index is None and corpus is None:
        raise serializers.ValidationError({"corpus": "give corpus (its active index) or index"})
    if index is not None and corpus is not None and index.corpus_id != corpus.pk:
        raise serializers.ValidationError(
            {"index": f"index {index.pk} belongs to corpus {index.corpus_id}, not {corpus.pk}"}
        )
    field = "index" if index is not None else "corpus"
    if index is None:
        index = corpus.active_index
        if index is None:
            raise serializers.ValidationError(
                {"corpus": f"corpus {corpus.pk} has no active index yet: run an embed job first"}
            )
    if index.state not in (VectorIndex.State.READY, VectorIndex.State.RETIRED):
        raise serializers.ValidationError(
            {field: f"index {index.pk} is {index.state}, not searchable yet"}
        )
    _fake_encoder_check(encoder=index.encoder, field=field, source=f"index {index.pk}")
    return index
