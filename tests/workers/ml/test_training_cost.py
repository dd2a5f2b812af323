"""Cheaper fine-tunes: distillation targets computed once (or handed in), bf16 only on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.workers.ml.test_training import PAIRS, _tiny
from workers.ml import training
from workers.ml.spec import default_model_path, read_model_spec
from workers.ml.training import DistillTargets, distill_targets_complete, finetune

torch.set_num_threads(2)


@pytest.fixture
def count_loads(monkeypatch):
    loads: list[str] = []
    original = training._load

    def counting(path, device):
        loads.append(str(path))
        return original(path, device)

    monkeypatch.setattr(training, "_load", counting)
    return loads


def test_cached_targets_train_like_the_per_step_parent_pass(tmp_path, count_loads):
    parent = default_model_path()
    old = finetune(
        parent_path=parent,
        pairs=PAIRS,
        out_dir=tmp_path / "old",
        config=_tiny(max_steps=2, parent_forward_each_step=True),
    )
    assert len(count_loads) == 2  # child + the frozen parent copy that runs every step
    count_loads.clear()
    new = finetune(
        parent_path=parent, pairs=PAIRS, out_dir=tmp_path / "new", config=_tiny(max_steps=2)
    )
    assert len(count_loads) == 2  # child + one pass over the texts, then the parent is freed
    for a, b in zip(old.loss_curve, new.loss_curve, strict=True):
        assert b["distill"] == pytest.approx(a["distill"], abs=1e-5)
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    assert new.loss_curve[1]["distill"] > 0  # the child moved, and the targets stayed put


def test_given_targets_are_used_and_the_parent_is_not_loaded(tmp_path, count_loads):
    parent = default_model_path()
    config = _tiny(max_steps=1)
    full = distill_targets_complete(parent_path=parent, pairs=PAIRS, config=config)
    assert set(full.queries) == {p.query for p in PAIRS}
    assert set(full.documents) == {t for p in PAIRS for t in [p.positive, *p.negatives]}
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in full.documents.values())
    count_loads.clear()
    # Everything handed in (as the finetune job does with the parent index's vectors).
    finetune(parent_path=parent, pairs=PAIRS, out_dir=tmp_path / "a", config=config, targets=full)
    assert count_loads == [str(parent)]  # the child only
    # Targets far from the parent's make a larger distillation term: they are what is used.
    rng = np.random.default_rng(0)
    far = DistillTargets(
        queries=full.queries,
        documents={
            k: rng.normal(size=v.shape).astype(np.float32) for k, v in full.documents.items()
        },
    )
    near = finetune(
        parent_path=parent, pairs=PAIRS, out_dir=tmp_path / "b", config=config, targets=full
    )
    moved = finetune(
        parent_path=parent, pairs=PAIRS, out_dir=tmp_path / "c", config=config, targets=far
    )
    assert moved.loss_curve[0]["distill"] > near.loss_curve[0]["distill"] + 0.5


def test_cpu_embeddings_stay_float32_without_autocast():
    from transformers import AutoModel, AutoTokenizer

    parent = default_model_path()
    device = torch.device("cpu")
    model = AutoModel.from_pretrained(str(parent)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(parent))
    with torch.no_grad():
        out = training._embed(
            model, tokenizer, ["a query"], spec=read_model_spec(parent), max_tokens=16
        )
    assert out.dtype == torch.float32
    assert training._uses_bf16(torch.device("cuda")) and not training._uses_bf16(device)
