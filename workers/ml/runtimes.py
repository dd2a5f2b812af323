"""Runtimes an index can be embedded with: torch (default; fp16/bf16 on GPU), and ONNX
Runtime on CPU in fp32 (`onnx`) or int8 (`onnx-int8`). Pure compute, no Django.

An OnnxEncoder is the torch Encoder with only the transformer swapped: the same
tokenisation, length bucketing, background tokenisation, chunking and pooling, so the
runtimes differ in arithmetic alone. The ONNX files are built once per model artifact into
a cache folder (export ~10 s, quantisation ~2 s on 2 cores) and reused by every process.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from workers.ml.encoder import Encoder, TokenBatch
from workers.ml.pooling import embed_hidden
from workers.ml.spec import ModelSpec

TORCH, ONNX, ONNX_INT8 = "torch", "onnx", "onnx-int8"
RUNTIMES = (TORCH, ONNX, ONNX_INT8)
# Part of the cache key: a change to the export or quantisation recipe (onnx_export.py)
# must bump it, or old files would be served as the new recipe's.
RECIPE = "r2-fused-perchannel-all"
# Weights and the config the graph depends on; tokenizer files are not in the graph.
_GRAPH_FILES = ("config.json", "*.safetensors", "pytorch_model*.bin")


class OnnxEncoder(Encoder):
    """Encoder's interface (encode, iter_encode, spec, dimension) on an ONNX Runtime session."""

    def __init__(self, spec: ModelSpec, *, model_file: str | Path, threads: int | None = None):
        self.model_file = Path(model_file)
        # As many threads as torch uses, so runtimes compare on the same cores.
        self.threads = threads or torch.get_num_threads()
        super().__init__(spec, device="cpu")

    def _load_model(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(
            str(self.model_file), options, providers=["CPUExecutionProvider"]
        )

    def forward(self, batch: TokenBatch) -> np.ndarray:
        feeds = {
            "input_ids": batch.input_ids.numpy(),
            "attention_mask": batch.attention_mask.numpy(),
        }
        (hidden,) = self.model.run(["last_hidden_state"], feeds)
        vectors = embed_hidden(
            torch.from_numpy(hidden),
            batch.attention_mask,
            mode=self.spec.pooling,
            normalize=self.spec.normalize,
        )
        return vectors.numpy()


def artifact_digest(model_dir: str | Path) -> str:
    """A content hash of what the exported graph depends on (and of the recipe): the cache
    key, so two registrations of one artifact share a file and two databases sharing an
    ARTIFACT_ROOT never confuse their version ids."""
    root = Path(model_dir)
    digest = hashlib.sha256(RECIPE.encode())
    files = sorted({path for pattern in _GRAPH_FILES for path in root.glob(pattern)})
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:24]


def built_once(path: Path, build: Callable[[Path], None]) -> Path:
    """`path`, built by `build(temporary path)` unless it exists.

    An exclusive lock makes a second process wait for the first one's file instead of
    building it again; writing to a temporary name and renaming means no reader, and no
    process after a crash mid-build, ever sees a partial file.
    """
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():  # built by the process we waited for
            return path
        # The suffix stays last: ONNX tooling decides how to write by it.
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
        try:
            build(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def onnx_model_file(model_dir: str | Path, *, runtime: str, cache_root: str | Path) -> Path:
    """The cached graph for `runtime` (built on first use): cache_root/<artifact digest>/."""
    if runtime not in (ONNX, ONNX_INT8):
        raise ValueError(f"runtime must be {ONNX!r} or {ONNX_INT8!r}, not {runtime!r}")
    folder = Path(cache_root) / artifact_digest(model_dir)
    fp32 = built_once(folder / "fp32.onnx", lambda tmp: _tooling().export_fp32(model_dir, tmp))
    if runtime == ONNX:
        return fp32
    return built_once(folder / "int8.onnx", lambda tmp: _tooling().quantize_platform(fp32, tmp))


def _tooling():
    # Lazy: the export tooling (onnx, ONNX Runtime's quantiser and graph optimiser) takes
    # ~1.5 s to import and runs once per model artifact; processes that only encode skip it.
    from workers.ml import onnx_export

    return onnx_export


def onnx_encoder(spec: ModelSpec, *, runtime: str, cache_root: str | Path) -> OnnxEncoder:
    """An encoder for `spec` on the ONNX `runtime`, exporting the model first if needed."""
    file = onnx_model_file(spec.path, runtime=runtime, cache_root=cache_root)
    return OnnxEncoder(spec, model_file=file)
