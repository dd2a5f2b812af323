"""Fine-tuning on the real all-MiniLM-L6-v2 at tiny settings (batch 4, 64 tokens, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from workers.ml.pooling import embed_hidden
from workers.ml.spec import default_model_path, read_model_spec
from workers.ml.training import (
    FinetuneConfig,
    StepInfo,
    TrainPair,
    assemble_batch,
    finetune,
    known_positives,
    mine_hard_negatives,
    plan_batches,
)

torch.set_num_threads(2)

# Confusable on purpose: each negative shares the query's topic, so the base model's InfoNCE
# is far from zero and a fall in loss means something was learned.
PAIRS = [
    TrainPair(
        "does vitamin d reduce fracture risk in the elderly",
        "Vitamin D supplementation lowered hip fracture rates in adults over 65.",
        ["Vitamin D deficiency is common in northern countries during winter."],
    ),
    TrainPair(
        "is aspirin effective for preventing heart attacks",
        "Daily low-dose aspirin reduced first myocardial infarction in men.",
        ["Aspirin was first synthesised from willow bark extract in 1897."],
    ),
    TrainPair(
        "does coffee raise blood pressure",
        "Caffeine intake produced an acute rise in systolic blood pressure.",
        ["Coffee is grown mainly in Brazil, Vietnam and Colombia."],
    ),
    TrainPair(
        "can exercise improve depression symptoms",
        "Aerobic exercise trials showed reduced depressive symptom scores.",
        ["Depression was described by Hippocrates as melancholia."],
    ),
    TrainPair(
        "do statins cause muscle pain",
        "Myalgia was reported by a minority of patients taking statins.",
        ["Statins inhibit HMG-CoA reductase in the liver."],
    ),
    TrainPair(
        "is red meat linked to colon cancer",
        "Processed and red meat consumption associated with colorectal cancer risk.",
        ["Red meat is a rich source of iron and vitamin B12."],
    ),
    TrainPair(
        "does sleep deprivation impair memory",
        "One night without sleep reduced hippocampal encoding of new memories.",
        ["Most adults sleep between seven and eight hours per night."],
    ),
    TrainPair(
        "are antibiotics useful for viral infections",
        "Antibiotics showed no benefit over placebo for the common cold.",
        ["Penicillin was discovered by Alexander Fleming in 1928."],
    ),
]
HELD_OUT = [
    "what causes type 2 diabetes",
    "smoking and lung cancer risk",
    "benefits of the mediterranean diet",
    "insulin resistance in obese children",
]


def _tiny(**overrides) -> FinetuneConfig:
    base = dict(batch_size=4, max_tokens=64, lr=1e-4, warmup_steps=0, checkpoint_every=2)
    base.update(overrides)
    return FinetuneConfig(**base)


def _embed_dir(path: Path | str, texts: list[str]) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        out = embed_hidden(model(**enc).last_hidden_state, enc["attention_mask"])
    return out.numpy()


def _weights(path: Path | str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


@pytest.fixture(scope="module")
def parent() -> Path:
    return default_model_path()


@pytest.fixture(scope="module")
def distilled_child(tmp_path_factory, parent) -> Path:
    out = tmp_path_factory.mktemp("child") / "model"
    finetune(parent_path=parent, pairs=PAIRS, out_dir=out, config=_tiny(max_steps=6))
    return out


# --------------------------------------------------------------------------- pure helpers


def test_mine_hard_negatives_ranks_by_similarity_and_skips_positives():
    docs = np.eye(5, dtype=np.float32)
    query = np.array([[0.9, 0.5, 0.4, 0.3, 0.1]], dtype=np.float32)
    got = mine_hard_negatives(query_vecs=query, doc_vecs=docs, positives=[{0}], k=2)
    assert got == [[1, 2]]
    skipped = mine_hard_negatives(query_vecs=query, doc_vecs=docs, positives=[{0}], k=2, skip_top=1)
    assert skipped == [[2, 3]]


def test_mine_hard_negatives_returns_fewer_when_corpus_is_small():
    docs = np.eye(3, dtype=np.float32)
    got = mine_hard_negatives(
        query_vecs=docs[:2], doc_vecs=docs, positives=[{0}, {1, 2}], k=5, block=1
    )
    assert got == [[1, 2], [0]]


def test_plan_batches_is_seeded_and_covers_every_pair_each_epoch():
    a = plan_batches(n_pairs=10, batch_size=4, total_steps=6, seed=3)
    assert a == plan_batches(n_pairs=10, batch_size=4, total_steps=6, seed=3)
    assert a != plan_batches(n_pairs=10, batch_size=4, total_steps=6, seed=4)
    assert sorted(i for batch in a[:3] for i in batch) == list(range(10))
    assert len(a) == 6  # cycles into a second epoch when max_steps asks for it


def test_a_judged_positive_of_the_query_is_masked_wherever_it_sits_in_the_batch():
    spec = read_model_spec(default_model_path())
    pairs = [
        TrainPair("q1", "d1", ["n1"]),
        TrainPair("q2", "d2", ["d3"]),
    ]
    # q1 is also judged relevant to d2 (q2's positive) and d3 (q2's hard negative), as on
    # NFCorpus, where queries share relevant documents; d9 is not in the batch.
    known = {"q1": {"d1", "d2", "d3", "d9"}, "q2": {"d2"}}
    batch = assemble_batch(pairs, negatives_per_query=1, spec=spec, known=known)
    col = {text: j for j, text in enumerate(batch.document_keys)}
    masked = {
        (batch.query_keys[i], text)
        for (i, j) in batch.mask.nonzero().tolist()
        for text in [batch.document_keys[j]]
    }
    assert masked == {("q1", "d2"), ("q1", "d3")}
    assert batch.targets == [col["d1"], col["d2"]]  # a query's own positive stays its target


def test_by_default_only_the_positives_among_the_pairs_are_known():
    spec = read_model_spec(default_model_path())
    pairs = [TrainPair("q1", "d1"), TrainPair("q1", "d2"), TrainPair("q2", "d3")]
    assert known_positives(pairs) == {"q1": {"d1", "d2"}, "q2": {"d3"}}
    batch = assemble_batch(pairs, negatives_per_query=0, spec=spec)
    # Each q1 pair masks q1's other positive; q2 sees both of q1's documents as negatives.
    assert batch.mask.tolist() == [[False, True, False], [True, False, False], [False] * 3]


# --------------------------------------------------------------------------- real model


def test_loss_falls_when_training_repeatedly_on_the_same_pairs(tmp_path, parent):
    infos: list[StepInfo] = []
    result = finetune(
        parent_path=parent,
        pairs=PAIRS[:4],
        out_dir=tmp_path / "out",
        config=_tiny(max_steps=8, distill_weight=0.0),
        on_step=infos.append,
    )
    assert result.steps == 8 and not result.stopped
    assert [i.step for i in infos] == list(range(1, 9))
    assert all(i.distill == 0.0 for i in infos)
    first, last = infos[0].infonce, infos[-1].infonce
    assert last < 0.5 * first, (first, last)
    assert [row["loss"] for row in result.loss_curve] == [i.loss for i in infos]


def test_distillation_keeps_the_child_closer_to_the_parent(tmp_path, parent, distilled_child):
    free = tmp_path / "free"
    finetune(
        parent_path=parent, pairs=PAIRS, out_dir=free, config=_tiny(max_steps=6, distill_weight=0)
    )
    base = _embed_dir(parent, HELD_OUT)
    cos_free = float(np.mean(np.sum(_embed_dir(free, HELD_OUT) * base, axis=1)))
    cos_distilled = float(np.mean(np.sum(_embed_dir(distilled_child, HELD_OUT) * base, axis=1)))
    assert cos_free < 0.9999  # training did move the model
    assert cos_distilled > cos_free, (cos_distilled, cos_free)


def test_output_directory_loads_with_read_model_spec_and_sentence_transformers(
    parent, distilled_child
):
    from sentence_transformers import SentenceTransformer

    assert read_model_spec(distilled_child).as_dict() | {"path": ""} == read_model_spec(
        parent
    ).as_dict() | {"path": ""}
    assert (distilled_child / "model.safetensors").exists()
    assert json.loads((distilled_child / "modules.json").read_text())
    st = SentenceTransformer(str(distilled_child), device="cpu")
    st.max_seq_length = 64
    via_st = st.encode(HELD_OUT, normalize_embeddings=True)
    assert np.allclose(via_st, _embed_dir(distilled_child, HELD_OUT), atol=1e-5)
    assert not np.allclose(via_st, _embed_dir(parent, HELD_OUT), atol=1e-3)


def test_run_stopped_by_should_stop_then_resumed_matches_an_uninterrupted_run(tmp_path, parent):
    config = _tiny(max_steps=5)
    whole = finetune(parent_path=parent, pairs=PAIRS, out_dir=tmp_path / "whole", config=config)

    done: list[int] = []
    stop_after_three = lambda: len(done) >= 3  # noqa: E731
    first = finetune(
        parent_path=parent,
        pairs=PAIRS,
        out_dir=tmp_path / "split",
        config=config,
        checkpoint_dir=tmp_path / "ckpt",
        on_step=lambda info: done.append(info.step),
        should_stop=stop_after_three,
    )
    assert first.stopped and first.steps == 3
    assert not (tmp_path / "split" / "model.safetensors").exists()

    resumed_steps: list[int] = []
    second = finetune(
        parent_path=parent,
        pairs=PAIRS,
        out_dir=tmp_path / "split",
        config=config,
        checkpoint_dir=tmp_path / "ckpt",
        on_step=lambda info: resumed_steps.append(info.step),
    )
    assert resumed_steps == [4, 5] and second.steps == 5 and not second.stopped
    assert [r["loss"] for r in second.loss_curve] == pytest.approx(
        [r["loss"] for r in whole.loss_curve], rel=1e-5
    )
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_killed_run_resumes_from_last_periodic_checkpoint(tmp_path, parent):
    config = _tiny(max_steps=5, checkpoint_every=2)

    def die_at_step_three(info: StepInfo) -> None:
        if info.step == 3:
            raise KeyboardInterrupt  # stands in for the worker being killed

    with pytest.raises(KeyboardInterrupt):
        finetune(
            parent_path=parent,
            pairs=PAIRS,
            out_dir=tmp_path / "out",
            config=config,
            checkpoint_dir=tmp_path / "ckpt",
            on_step=die_at_step_three,
        )
    replayed: list[int] = []
    result = finetune(
        parent_path=parent,
        pairs=PAIRS,
        out_dir=tmp_path / "out",
        config=config,
        checkpoint_dir=tmp_path / "ckpt",
        on_step=lambda info: replayed.append(info.step),
    )
    assert replayed == [3, 4, 5]  # step 2 was the last checkpoint
    assert result.steps == 5 and len(result.loss_curve) == 5


def test_checkpoint_of_a_different_run_is_refused(tmp_path, parent):
    finetune(
        parent_path=parent,
        pairs=PAIRS[:4],
        out_dir=tmp_path / "out",
        config=_tiny(max_steps=1, distill_weight=0),
        checkpoint_dir=tmp_path / "ckpt",
        should_stop=lambda: True,
    )
    with pytest.raises(ValueError, match="different run"):
        finetune(
            parent_path=parent,
            pairs=PAIRS,
            out_dir=tmp_path / "out",
            config=_tiny(max_steps=1, distill_weight=0),
            checkpoint_dir=tmp_path / "ckpt",
        )
