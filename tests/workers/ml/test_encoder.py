"""The encoder on the real all-MiniLM-L6-v2, at small sizes; and the fake encoder."""

from __future__ import annotations

import itertools
import random
import threading
import time

import numpy as np
import pytest
import torch

from workers.ml.encoder import (
    Chunking,
    Encoder,
    FakeEncoder,
    chunk_count,
    chunk_spans,
    default_batch_size,
    load_encoder,
)
from workers.ml.spec import ModelLoadError, default_model_path

torch.set_num_threads(2)

_VOCAB = (
    "protein cell gene expression tumour mice patients risk trial vaccine the of and in "
    "a to is was were with by 95% CI p<0.001 IL-6 TNF-α β-catenin naïve café Zürich "
    "北京 東京 привет мир 🙂 (see Fig. 2) [12] e.g., i.e.; -- ... 3.14 1,000 2024 $5 #tag"
)
WORDS = _VOCAB.split()


def _varied_texts(n: int, *, seed: int = 0) -> list[str]:
    """Short, medium and very long (> 256 tokens) texts with punctuation, numbers, non-ASCII."""
    rng = random.Random(seed)
    # Mostly short (cheap on CPU), a few past the 256-token limit to pin truncation.
    lengths = [1, 2, 3, 4, 6, 8, 12, 20, 30, 40, 60, 90] * 2 + [400]
    texts = [" ".join(rng.choices(WORDS, k=rng.choice(lengths))) for _ in range(n - 6)]
    return texts + ["", " ", "!!!", "12345", "Ünïcödé ñ", "a" * 2000]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder(device="cpu")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_encode_matches_sentence_transformers(encoder: Encoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = _varied_texts(240)
    assert max(len(encoder.tokenizer(t)["input_ids"]) for t in texts) > 256
    reference = sentence_transformers.SentenceTransformer(
        str(default_model_path()), device="cpu"
    ).encode(texts, normalize_embeddings=True, batch_size=32)
    ours = encoder.encode(texts, batch_size=16)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
    assert _cosines(ours, reference).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_iter_encode_buckets_but_returns_the_same_vectors_per_key(encoder: Encoder) -> None:
    texts = _varied_texts(60, seed=1)
    keys = [f"doc-{i}" for i in range(len(texts))]
    expected = dict(zip(keys, encoder.encode(texts, batch_size=32), strict=True))
    batches = list(
        encoder.iter_encode(zip(keys, texts, strict=True), batch_size=8, window_batches=3)
    )
    got = {k: v for b in batches for k, v in zip(b.keys, b.vectors, strict=True)}
    assert sorted(got) == sorted(keys) and sum(len(b.keys) for b in batches) == len(keys)
    for key in keys:
        assert np.allclose(got[key], expected[key], atol=1e-5), key
    lengths = {
        k: len(encoder.tokenizer(t, truncation=True, max_length=256)["input_ids"])
        for k, t in zip(keys, texts, strict=True)
    }
    for b in batches:  # bucketed: each batch is in descending token length
        assert [lengths[k] for k in b.keys] == sorted((lengths[k] for k in b.keys), reverse=True)
        assert b.n_tokens == sum(lengths[k] for k in b.keys)


def test_iter_encode_streams_without_reading_the_whole_input(encoder: Encoder) -> None:
    pulled = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            yield i, f"item {i}"

    stream = encoder.iter_encode(endless(), batch_size=4, window_batches=2)
    first = [next(stream) for _ in range(3)]
    stream.close()
    assert all(len(b.keys) == 4 for b in first)
    assert len(pulled) <= 3 * 8  # at most the current window, the prefetched one, one more


@pytest.mark.timeout(60)
def test_tokeniser_thread_errors_propagate(encoder: Encoder, monkeypatch) -> None:
    real, threads = encoder._token_ids, []

    def failing(texts, *, kind):
        threads.append(threading.current_thread().name)
        if len(threads) == 2:
            raise RuntimeError("tokeniser exploded")
        return real(texts, kind=kind)

    monkeypatch.setattr(encoder, "_token_ids", failing)
    stream = encoder.iter_encode(((i, "text") for i in range(40)), batch_size=4, window_batches=2)
    first = next(stream)
    with pytest.raises(RuntimeError, match="tokeniser exploded"):
        list(stream)
    assert len(first.keys) == 4
    assert all(name.startswith("embedhub-tokenize") for name in threads)


@pytest.mark.timeout(60)
def test_a_bad_item_surfaces_as_an_error_not_a_hang(encoder: Encoder) -> None:
    items = [(i, "fine") for i in range(10)] + [(10, None)]
    with pytest.raises((TypeError, ValueError)):
        list(encoder.iter_encode(items, batch_size=4, window_batches=1))


def test_chunks_cover_every_token_with_the_overlap(encoder: Encoder) -> None:
    text = " ".join(_varied_texts(40, seed=2))
    body = encoder.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    assert len(body) > 600
    chunks = encoder.tokenize_chunks(text, chunking=Chunking(window=64, overlap=8))
    cls, sep = encoder.tokenizer.cls_token_id, encoder.tokenizer.sep_token_id
    assert all(len(c) <= 64 and c[0] == cls and c[-1] == sep for c in chunks)
    inner = [c[1:-1] for c in chunks]
    for left, right in itertools.pairwise(inner):
        assert left[-8:] == right[:8]
    rebuilt = inner[0] + [t for c in inner[1:] for t in c[8:]]
    assert rebuilt == body


def test_chunk_window_is_clamped_to_the_model_limit(encoder: Encoder) -> None:
    chunks = encoder.tokenize_chunks("word " * 1000, chunking=Chunking(window=4096, overlap=0))
    assert max(map(len, chunks)) == encoder.spec.max_tokens
    assert sum(len(c) - 2 for c in chunks) == 1000


def test_iter_encode_with_chunking_keys_chunks_and_keeps_short_docs_whole(encoder: Encoder) -> None:
    items = [("long", "cell " * 300), ("short", "a short document")]
    batches = list(encoder.iter_encode(items, chunking=Chunking(window=128, overlap=16)))
    got = {k: v for b in batches for k, v in zip(b.keys, b.vectors, strict=True)}
    n_long = len(chunk_spans(300, size=126, overlap=16))
    assert sorted(got, key=str) == sorted(
        [("long", i) for i in range(n_long)] + [("short", 0)], key=str
    )
    assert np.allclose(got[("short", 0)], encoder.encode(["a short document"])[0], atol=1e-5)


def test_chunk_spans_rejects_an_overlap_that_would_not_advance() -> None:
    assert chunk_spans(0, size=4, overlap=1) == [(0, 0)]
    assert chunk_spans(10, size=4, overlap=1) == [(0, 4), (3, 7), (6, 10)]
    with pytest.raises(ValueError, match="overlap"):
        chunk_spans(10, size=4, overlap=4)
    with pytest.raises(ValueError):
        Chunking(window=0, overlap=0)


def test_chunk_count_is_the_number_of_spans_and_limit_keeps_the_first_ones() -> None:
    for n, size, overlap in itertools.product(range(0, 60), range(1, 12), range(0, 11)):
        if overlap < size:
            spans = chunk_spans(n, size=size, overlap=overlap)
            assert chunk_count(n, size=size, overlap=overlap) == len(spans), (n, size, overlap)
            assert chunk_spans(n, size=size, overlap=overlap, limit=3) == spans[:3]
    with pytest.raises(ValueError, match="max_chunks"):
        Chunking(window=8, max_chunks=0)


def test_chunks_past_max_chunks_are_dropped_and_reported_once_per_text(encoder: Encoder) -> None:
    items = [("long", "cell " * 300), ("short", "a short document"), ("mid", "gene " * 150)]
    chunking = Chunking(window=64, overlap=8, max_chunks=2)
    batches = list(encoder.iter_encode(items, batch_size=2, chunking=chunking))
    keys = sorted((k for b in batches for k in b.keys), key=str)
    assert keys == sorted([("long", 0), ("long", 1), ("mid", 0), ("mid", 1), ("short", 0)], key=str)
    # 62 text tokens per window ([CLS] and [SEP] take 2), advancing by 54.
    capped = [c for b in batches for c in b.capped]
    want = {"long": len(chunk_spans(300, size=62, overlap=8)) - 2}
    want["mid"] = len(chunk_spans(150, size=62, overlap=8)) - 2
    assert sorted(capped) == sorted(want.items()) and want == {"long": 4, "mid": 1}
    uncapped = encoder.tokenize_chunks("cell " * 300, chunking=Chunking(64, 8))
    assert encoder.tokenize_chunks("cell " * 300, chunking=chunking) == uncapped[:2]


def test_fake_encoder_drops_chunks_past_max_chunks_and_reports_them() -> None:
    fake = FakeEncoder(dimension=8)
    items = [("a", "x " * 10), ("b", "y"), ("c", "z " * 7)]
    batches = list(fake.iter_encode(items, chunking=Chunking(4, 1, max_chunks=2)))
    assert [k for b in batches for k in b.keys] == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("c", 0),
        ("c", 1),
    ]
    assert [c for b in batches for c in b.capped] == [("a", 1)]  # 10 words: 3 windows; 7: 2


def test_default_batch_size_is_larger_on_gpu() -> None:
    assert default_batch_size("cpu") == 32
    assert default_batch_size("cuda") == 256


def test_load_encoder_resolves_default_directory_and_fake(encoder: Encoder) -> None:
    assert encoder.dimension == 384 and encoder.spec.max_tokens == 256
    assert encoder.device == torch.device("cpu")
    assert isinstance(load_encoder("fake"), FakeEncoder)
    assert load_encoder("fake:64").dimension == 64
    with pytest.raises(ModelLoadError, match="no model directory"):
        load_encoder("/nonexistent/model/dir")


@pytest.mark.timeout(60)
def test_unreachable_hub_model_fails_fast_with_instructions() -> None:
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as error:
        load_encoder("embedhub-tests/no-such-model-7f3a")
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "embedhub-tests/no-such-model-7f3a" in message and "local directory" in message


def test_fake_encoder_is_deterministic_unit_and_text_dependent() -> None:
    texts = [f"document number {i}" for i in range(500)] + ["", "naïve 北京"]
    a, b = FakeEncoder(dimension=48).encode(texts), FakeEncoder(dimension=48).encode(texts)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (len(texts), 48) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert len({row.tobytes() for row in a}) == len(texts)
    similarity = a @ a.T
    np.fill_diagonal(similarity, 0.0)
    assert np.abs(similarity).max() < 0.9  # unrelated texts are far apart


def test_fake_iter_encode_matches_encode_and_chunks_by_words() -> None:
    fake = FakeEncoder(dimension=16)
    batches = list(fake.iter_encode([("a", "x " * 10), ("b", "y")], chunking=Chunking(4, 1)))
    keys = [k for b in batches for k in b.keys]
    assert keys == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    vectors = np.concatenate([b.vectors for b in batches])
    np.testing.assert_array_equal(vectors[-1], fake.encode(["y"])[0])
    assert sum(b.n_tokens for b in batches) == 4 + 4 + 4 + 1


def test_fake_encoder_is_fast_enough_to_measure_platform_overhead() -> None:
    fake = FakeEncoder(dimension=384)
    items = [(i, f"a document about topic {i} with some words") for i in range(20_000)]
    # CPU time, not wall time: the rate must not depend on what else shares the machine.
    start = time.process_time()
    n = sum(len(b.keys) for b in fake.iter_encode(items, batch_size=256))
    rate = n / (time.process_time() - start)
    assert n == len(items) and rate >= 50_000, rate
