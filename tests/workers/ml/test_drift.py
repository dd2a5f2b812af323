"""Query drift vector and compensation: exact math on hand-made vectors, then the real model."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.ml.drift import compensate, drift_vector
from workers.ml.pooling import embed_hidden
from workers.ml.spec import default_model_path, read_model_spec
from workers.ml.training import FinetuneConfig, TrainPair, finetune

torch.set_num_threads(2)

QUERIES = [
    "does vitamin d reduce fracture risk in the elderly",
    "is aspirin effective for preventing heart attacks",
    "does coffee raise blood pressure",
    "can exercise improve depression symptoms",
    "do statins cause muscle pain",
    "is red meat linked to colon cancer",
    "does sleep deprivation impair memory",
    "are antibiotics useful for viral infections",
]
POSITIVES = [
    "Vitamin D supplementation lowered hip fracture rates in adults over 65.",
    "Daily low-dose aspirin reduced first myocardial infarction in men.",
    "Caffeine intake produced an acute rise in systolic blood pressure.",
    "Aerobic exercise trials showed reduced depressive symptom scores.",
    "Myalgia was reported by a minority of patients taking statins.",
    "Processed and red meat consumption associated with colorectal cancer risk.",
    "One night without sleep reduced hippocampal encoding of new memories.",
    "Antibiotics showed no benefit over placebo for the common cold.",
]


class _TorchEncoder:
    """Minimal stand-in for workers.ml.encoder.Encoder: the drift code only needs `.encode`."""

    def __init__(self, path: Path | str) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.spec = read_model_spec(path)
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))

    def encode(self, texts: Sequence[str], *, kind: str = "query") -> np.ndarray:
        prefix = self.spec.query_prefix if kind == "query" else self.spec.document_prefix
        enc = self.tokenizer(
            [prefix + t for t in texts],
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        with torch.no_grad():
            hidden = self.model(**enc).last_hidden_state
        return embed_hidden(hidden, enc["attention_mask"], mode=self.spec.pooling).numpy()


class _Shifted:
    """A fake encoder whose output is another's plus a fixed offset."""

    def __init__(self, base, offset: np.ndarray) -> None:
        self.base, self.offset = base, offset

    def encode(self, texts: Sequence[str], *, kind: str = "query") -> np.ndarray:
        return self.base.encode(texts, kind=kind) + self.offset


class _Hashed:
    """Deterministic pseudo-embeddings, one unit vector per text."""

    def encode(self, texts: Sequence[str], *, kind: str = "query") -> np.ndarray:
        rows = [
            np.random.default_rng(zlib.crc32(f"{kind}:{t}".encode())).normal(size=8) for t in texts
        ]
        vecs = np.array(rows, dtype=np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def parent_encoder() -> _TorchEncoder:
    return _TorchEncoder(default_model_path())


@pytest.fixture(scope="module")
def drifted_child(tmp_path_factory) -> _TorchEncoder:
    out = tmp_path_factory.mktemp("drift") / "child"
    config = FinetuneConfig(
        batch_size=4, max_tokens=64, lr=2e-4, warmup_steps=0, max_steps=6, distill_weight=0
    )
    pairs = [TrainPair(q, p) for q, p in zip(QUERIES, POSITIVES, strict=True)]
    finetune(parent_path=default_model_path(), pairs=pairs, out_dir=out, config=config)
    return _TorchEncoder(out)


# --------------------------------------------------------------------------- exact math


def test_compensate_subtracts_delta_and_renormalises():
    got = compensate(np.array([[1.0, 0.0]]), [np.array([0.5, -0.5])])
    assert np.allclose(got, [[np.sqrt(0.5), np.sqrt(0.5)]])


def test_compensate_sums_the_deltas_of_every_version_in_between():
    q = np.array([[0.6, 0.8], [1.0, 0.0]])
    one_step = compensate(q, [np.array([0.3, -0.1])])
    two_steps = compensate(q, [np.array([0.1, 0.1]), np.array([0.2, -0.2])])
    assert np.allclose(one_step, two_steps)
    assert np.allclose(np.linalg.norm(two_steps, axis=1), 1.0)


def test_compensate_keeps_a_single_vector_one_dimensional_and_handles_no_deltas():
    got = compensate(np.array([3.0, 4.0]), [])
    assert got.shape == (2,)
    assert np.allclose(got, [0.6, 0.8])


def test_compensate_returns_zero_instead_of_nan_when_the_query_cancels_out():
    got = compensate(np.array([[1.0, 0.0]]), [np.array([1.0, 0.0])])
    assert np.array_equal(got, [[0.0, 0.0]])


def test_drift_vector_recovers_a_constant_offset_whatever_the_batch_size():
    offset = np.linspace(-0.1, 0.1, 8).astype(np.float32)
    parent = _Hashed()
    child = _Shifted(parent, offset)
    assert np.allclose(drift_vector(child=child, parent=parent, queries=QUERIES[:7]), offset)
    chunked = drift_vector(child=child, parent=parent, queries=QUERIES[:7], batch_size=3)
    assert np.allclose(chunked, offset, atol=1e-6)


def test_drift_vector_is_the_mean_difference_not_normalised():
    parent = _Hashed()
    child = _Shifted(parent, np.full(8, 0.01, dtype=np.float32))
    delta = drift_vector(child=child, parent=parent, queries=QUERIES)
    assert np.linalg.norm(delta) == pytest.approx(0.01 * np.sqrt(8), rel=1e-4)


def test_drift_vector_refuses_an_empty_query_set():
    with pytest.raises(ValueError):
        drift_vector(child=_Hashed(), parent=_Hashed(), queries=[])


# --------------------------------------------------------------------------- real model


def test_drift_of_an_identical_child_is_zero(parent_encoder):
    twin = _TorchEncoder(default_model_path())
    delta = drift_vector(child=twin, parent=parent_encoder, queries=QUERIES)
    assert delta.shape == (384,)
    assert np.linalg.norm(delta) < 1e-5


def test_compensation_moves_fine_tuned_queries_back_toward_the_parent(
    parent_encoder, drifted_child
):
    delta = drift_vector(child=drifted_child, parent=parent_encoder, queries=QUERIES)
    assert np.linalg.norm(delta) > 1e-3  # the child really drifted
    old = parent_encoder.encode(QUERIES)
    new = drifted_child.encode(QUERIES)
    raw = np.mean(np.sum(new * old, axis=1))
    fixed = np.mean(np.sum(compensate(new, [delta]) * old, axis=1))
    assert fixed > raw, (fixed, raw)
