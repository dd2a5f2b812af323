"""One loaded encoder per (model version, override) per process: loading costs seconds."""

from __future__ import annotations

from functools import lru_cache

from embedhub.core.errors import ApplicationError
from workers.ml.encoder import Encoder, load_encoder
from workers.ml.spec import ModelLoadError, ModelSpec


@lru_cache(maxsize=4)
def _load(spec: ModelSpec, override: str):
    if override:
        return load_encoder(override)
    return Encoder(spec)


def model_version_spec(model_version) -> ModelSpec:
    """The registry's record of how to embed with a version (what the index was built with)."""
    return ModelSpec(
        path=model_version.artifact_path,
        dimension=model_version.dimension,
        pooling=model_version.pooling,
        normalize=model_version.normalize,
        max_tokens=model_version.max_tokens,
        query_prefix=model_version.query_prefix,
        document_prefix=model_version.document_prefix,
    )


def encoder_for(*, model_version, override: str = ""):
    """The encoder that embeds for `model_version`; `override` ("fake:64") swaps in the
    deterministic fake encoder for job-mechanics tests and overhead benchmarks."""
    try:
        return _load(model_version_spec(model_version), override or "")
    except ModelLoadError as exc:
        raise ApplicationError(f"model version {model_version.pk}: {exc}") from exc
