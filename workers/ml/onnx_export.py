"""Export a model's transformer to ONNX and quantise it to int8 (pure compute, no Django).

The exported graph takes (input_ids, attention_mask) and returns last_hidden_state, with
dynamic batch and sequence axes; tokenisation, pooling and normalisation stay in Python
(workers.ml.runtimes.OnnxEncoder reuses the torch Encoder's), so every runtime embeds the
same tokens the same way.

Why this recipe (measured in benchmarks/runtimes, see RESULTS.md):
- the TorchScript exporter on the model loaded with eager attention: its graph is the one
  ONNX Runtime's BERT optimiser recognises, so attention, embedding + LayerNorm, skip +
  LayerNorm and bias + GELU are fused into single kernels (the torch.export-based exporter's
  graph of the same model gets no attention fusion). The fused fp32 graph alone is faster
  than torch on CPU, and the quantiser can then replace a whole attention block with QAttention;
- per-channel dynamic int8 weights (one scale per output channel instead of one per
  matrix) on every MatMul. Per-tensor weights everywhere keep a mean cosine of only 0.937 to
  fp32 on SciFact (and lose 0.8 nDCG@10 points); per-channel reaches 0.9947 with no loss
  (+0.57 points, inside the noise) at 1.79x torch's docs/s on a quiet 2-core box. Keeping
  the feed-forward output projections fp32 halves the remaining error (cosine 0.9974) but
  reached only 1.33x there, under the 1.5x the runtime exists for; every int8 index is
  gated on its own corpus anyway (vectors/quality.py).
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers import optimizer
from transformers import AutoModel

_GELUS = ("Gelu", "BiasGelu", "FastGelu")  # what the optimiser fuses GELU into
INPUTS = ["input_ids", "attention_mask"]
OUTPUT = "last_hidden_state"
OPSET = 17


class _LastHidden(torch.nn.Module):
    """The transformer alone, positional inputs (what the exporter traces)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _sample_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    # Traced on a padded batch, so the graph is the one that masks padding.
    ids = torch.tensor([[1, 5, 6, 2], [1, 5, 2, 0]], dtype=torch.long)
    return ids, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.long)


def _attention_shape(model_dir: str | Path) -> tuple[int, int]:
    """(heads, hidden size) from config.json; 0 lets the optimiser detect them."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("num_attention_heads", 0)), int(config.get("hidden_size", 0))


def export_raw(model_dir: str | Path, out: str | Path) -> None:
    """The unfused graph, as torch.onnx exports it."""
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in [*INPUTS, OUTPUT]}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, chosen on
        # purpose (module docstring); its tracer warnings concern branches on shapes that
        # are equal for every input here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LastHidden(model),
            _sample_inputs(),
            str(out),
            input_names=INPUTS,
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def export_fp32(model_dir: str | Path, out: str | Path) -> None:
    """The fp32 graph with ONNX Runtime's transformer fusions (what the `onnx` runtime runs)."""
    heads, hidden = _attention_shape(model_dir)
    with tempfile.TemporaryDirectory(dir=Path(out).parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        export_raw(model_dir, raw)
        # opt_level 1: fusions and constant folding only, nothing specific to this CPU.
        fused = optimizer.optimize_model(
            str(raw), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1
        )
        fused.save_model_to_file(str(out))


def ffn_output_nodes(path: str | Path) -> list[str]:
    """The feed-forward output projections: the MatMuls fed by a GELU (fused or not)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and producers.get(node.input[0]) in _GELUS
    ]


def quantize_platform(src: str | Path, out: str | Path) -> None:
    """The `onnx-int8` runtime's recipe (module docstring)."""
    quantize_int8(src, out, per_channel=True)


def quantize_int8(
    src: str | Path, out: str | Path, *, per_channel: bool = True, keep_fp32: Sequence[str] = ()
) -> None:
    """Dynamic int8 weights (activations are quantised per batch at run time); the nodes
    named in `keep_fp32` stay fp32.

    per_channel=False is the naive whole-model baseline the benchmark compares against.
    """
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_hint)
    try:
        quantize_dynamic(
            str(src),
            str(out),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(keep_fp32),
            # The fused ops (com.microsoft domain) defeat shape inference; their outputs
            # are fp32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.removeFilter(_no_preprocessing_hint)


def _no_preprocessing_hint(record: logging.LogRecord) -> bool:
    # The quantiser logs on the root logger that the model was not pre-processed: its
    # pre-processing (shape inference, the same fusions) is what export_fp32 already did.
    return "pre-processing" not in record.getMessage()
