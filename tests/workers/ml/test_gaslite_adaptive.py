"""The adaptive GASLITE attacker on the real model: it places only tokens the corpus uses
and trades cosine for a lower detector penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.screening_texts import clean_documents
from workers.ml.detectors import screen_fit, words
from workers.ml.gaslite import AttackConfig, Attacker
from workers.ml.spec import default_model_path

CONCEPT = [
    "Vitamin D supplementation reduces the risk of fractures in older adults.",
    "Low vitamin D levels increase the risk of colorectal cancer.",
    "High dose vitamin D lowers blood pressure in hypertensive patients.",
]
MESSAGE = "Visit BestShoes.com for cheap running shoes"
SMALL = dict(
    trigger_len=8,
    iterations=3,
    positions_per_iter=4,
    candidates_top=64,
    n_candidates=8,
    grad_copies=4,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def attacker() -> Attacker:
    torch.set_num_threads(2)
    return Attacker.from_path(default_model_path(), device="cpu")


def test_adaptive_attack_uses_corpus_words_and_lowers_the_penalty(attacker):
    screen = screen_fit(clean_documents(200), fpr=0.01)
    target = attacker.embed_texts(CONCEPT, kind="query").mean(axis=0)
    vocab = attacker.vocabulary_mask(lambda tok: tok.isalnum() and screen.language.knows(tok))
    assert 0 < int(vocab.sum()) < int(attacker.allowed.sum())
    plain = attacker.attack(target=target, message=MESSAGE, config=AttackConfig(**SMALL))
    adaptive = attacker.attack(
        target=target,
        message=MESSAGE,
        config=AttackConfig(**SMALL, naturalness_weight=0.05),
        penalty=screen.naturalness_penalty,
        vocabulary=vocab,
    )
    placed = set(attacker.tokenizer.convert_ids_to_tokens(adaptive.trigger_ids))
    initial = set(
        attacker.tokenizer.convert_ids_to_tokens(
            attacker._initial_trigger(MESSAGE, AttackConfig(**SMALL))
        )
    )
    assert all(screen.language.knows(t) or t in initial for t in placed)
    assert adaptive.best_objective is not None and adaptive.best_objective <= adaptive.best_cosine
    assert plain.best_objective is None
    # Its passage is more like the corpus than the plain attack's, by the detector's own measure.
    p_plain, p_adaptive = screen.naturalness_penalty([plain.text, adaptive.text])
    assert p_adaptive <= p_plain
    assert np.isfinite(adaptive.best_cosine) and words(adaptive.text)
