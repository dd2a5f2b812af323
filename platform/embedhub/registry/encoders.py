"""One loaded encoder per (model version, override, runtime) per process: loading costs
seconds (and the first ONNX use of a version exports it, once per ARTIFACT_ROOT)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from django.conf import settings

from embedhub.core.errors import ApplicationError
from workers.ml.encoder import Encoder, load_encoder
from workers.ml.runtimes import RUNTIMES, TORCH, onnx_encoder
from workers.ml.spec import ModelLoadError, ModelSpec


@lru_cache(maxsize=4)
def _load(spec: ModelSpec, override: str, runtime: str):
    if override:  # the fake encoder has no model to run in another runtime
        return load_encoder(override)
    if runtime == TORCH:
        return Encoder(spec)
    return onnx_encoder(spec, runtime=runtime, cache_root=onnx_cache_root())


def onnx_cache_root() -> Path:
    """Where exported and quantised graphs live: ARTIFACT_ROOT/onnx/<artifact digest>/."""
    return Path(settings.ARTIFACT_ROOT) / "onnx"


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


def encoder_for(*, model_version, override: str = "", runtime: str = TORCH):
    """The encoder that embeds for `model_version` on `runtime` (workers.ml.runtimes);
    `override` ("fake:64") swaps in the deterministic fake encoder for job-mechanics tests
    and overhead benchmarks."""
    if runtime not in RUNTIMES:
        raise ApplicationError(f"runtime must be one of {list(RUNTIMES)}, not {runtime!r}")
    try:
        return _load(model_version_spec(model_version), override or "", runtime)
    except ModelLoadError as exc:
        raise ApplicationError(f"model version {model_version.pk}: {exc}") from exc
