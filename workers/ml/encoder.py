"""Text -> unit vectors with a `transformers` model, plus a fake encoder for platform tests.

Throughput comes from three things (see ARCHITECTURE.md, "Encoding"):
- bucketing: items are read a window at a time and sorted by token length inside the
  window, so a batch pads to a length close to its members' and little compute is wasted;
- overlap: the next window is tokenised in a background thread while the model runs the
  current one (fast tokenisers and torch both release the GIL);
- fp16/bf16 autocast on GPU.
Memory stays flat however long the input: at most two windows are held at a time.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from workers.ml.pooling import embed_hidden
from workers.ml.spec import ModelLoadError, ModelSpec, default_model_path, read_model_spec

_T = TypeVar("_T")
_B = TypeVar("_B")

# Only what a model needs: a hub repo often also holds ONNX / OpenVINO / TF copies.
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model*.bin"]
_HUB_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Chunking:
    """Split long documents into overlapping token windows instead of truncating them.

    `window` counts every token the model sees (special tokens and the prefix included) and
    is clamped to the model's max_tokens; `overlap` tokens of text are shared by
    consecutive windows so no passage loses its context at a cut. A document keeps at most
    `max_chunks` windows (None: all); the batches report what was cut (`EncodedBatch.capped`).
    """

    window: int
    overlap: int = 0
    max_chunks: int | None = None

    def __post_init__(self) -> None:
        if self.window < 1 or self.overlap < 0:
            raise ValueError(f"invalid chunking {self}: window >= 1 and overlap >= 0 required")
        if self.max_chunks is not None and self.max_chunks < 1:
            raise ValueError(f"invalid chunking {self}: max_chunks >= 1 required")


@dataclass
class EncodedBatch:
    keys: list
    vectors: np.ndarray
    n_tokens: int
    # (item key, windows dropped) for the items whose chunks hit Chunking.max_chunks; each
    # item is reported once, on one of the batches of its window of items.
    capped: list[tuple[Hashable, int]] = field(default_factory=list)


@dataclass
class TokenBatch:
    """A padded batch; `positions[i]` is the caller's index of row i (rows are length-sorted)."""

    positions: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def default_batch_size(device: str | torch.device) -> int:
    """32 on CPU, 256 on GPU.

    A CPU is saturated by a few sequences: bigger batches only add padding and memory.
    A GPU needs hundreds of 256-token sequences in flight to keep its cores busy, and 256
    still keeps MiniLM-sized activations to a few GiB in half precision.
    """
    return 256 if torch.device(device).type == "cuda" else 32


def chunk_spans(
    n_tokens: int, *, size: int, overlap: int, limit: int | None = None
) -> list[tuple[int, int]]:
    """[start, end) windows of at most `size` covering 0..n_tokens, `overlap` shared by neighbours.

    A sequence that fits stays one span (an empty one gives [(0, 0)]). With `limit`, only the
    first `limit` spans (the rest of the sequence is not covered).
    """
    if overlap >= size:
        raise ValueError(f"overlap {overlap} must be smaller than the window's text size {size}")
    spans, start = [], 0
    while limit is None or len(spans) < limit:
        end = min(start + size, n_tokens)
        spans.append((start, end))
        if end >= n_tokens:
            break
        start = end - overlap
    return spans


def chunk_count(n_tokens: int, *, size: int, overlap: int) -> int:
    """len(chunk_spans(...)) without building them (a huge text must not cost a huge list)."""
    if n_tokens <= size:
        return 1
    return 1 + math.ceil((n_tokens - size) / (size - overlap))


def _capped_spans(n_tokens: int, *, size: int, chunking: Chunking) -> tuple[list, int]:
    """The spans one text keeps under `chunking`, and how many it drops."""
    spans = chunk_spans(n_tokens, size=size, overlap=chunking.overlap, limit=chunking.max_chunks)
    if chunking.max_chunks is None or len(spans) < chunking.max_chunks:
        return spans, 0
    return spans, chunk_count(n_tokens, size=size, overlap=chunking.overlap) - len(spans)


def _windows(items: Iterable[_T], *, size: int) -> Iterator[list[_T]]:
    iterator = iter(items)
    while window := list(islice(iterator, size)):
        yield window


def _prefetched(windows: Iterator[_T], prepare: Callable[[_T], list[_B]]) -> Iterator[_B]:
    """prepare(window k+1) runs in a worker thread while the caller consumes window k.

    The input is read here, in the caller's thread (a Django queryset iterator must stay on
    its connection's thread); the worker's exceptions re-raise at `result()`, so a failed
    tokenisation surfaces instead of hanging. An abandoned generator waits at most for
    the one window being prepared.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedhub-tokenize") as pool:
        window = next(windows, None)
        pending = pool.submit(prepare, window) if window is not None else None
        while pending is not None:
            batches = pending.result()
            window = next(windows, None)
            pending = pool.submit(prepare, window) if window is not None else None
            yield from batches


class Encoder:
    """A `transformers` encoder that embeds text the way the model's spec says."""

    def __init__(self, spec: ModelSpec, *, device: str | None = None) -> None:
        # Lazy: importing transformers costs about a second, and web processes import this
        # module (for Chunking) without ever loading a model.
        from transformers import AutoTokenizer

        self.spec = spec
        self.dimension = spec.dimension
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(spec.path)
            self.model = self._load_model()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load the model in {spec.path}: {exc}") from exc
        self._pad_id = self.tokenizer.pad_token_id or 0
        self._head, self._tail = self._special_frame()

    def _load_model(self) -> Any:
        """The transformer that `forward` runs; other runtimes override this and `forward`."""
        # Lazy for the same reason as the tokenizer above.
        from transformers import AutoModel

        return AutoModel.from_pretrained(self.spec.path).to(self.device).eval()

    def _special_frame(self) -> tuple[list[int], list[int]]:
        """The special ids the tokenizer wraps one text in ([CLS] .. [SEP] for BERT).

        Chunks are cut from bare ids and re-wrapped; read off a sample because transformers 5
        tokenizers no longer expose build_inputs_with_special_tokens.
        """
        body = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        at = next(i for i in range(len(full)) if full[i : i + len(body)] == body)
        return full[:at], full[at + len(body) :]

    # -- tokenisation ---------------------------------------------------------------------

    def _prefix(self, kind: str) -> str:
        if kind not in ("query", "document"):
            raise ValueError(f"kind must be 'query' or 'document', not {kind!r}")
        return self.spec.query_prefix if kind == "query" else self.spec.document_prefix

    def _token_ids(self, texts: Sequence[str], *, kind: str) -> list[list[int]]:
        """Truncated ids with special tokens: what sentence-transformers feeds the model."""
        prefix = self._prefix(kind)
        return self.tokenizer(
            [prefix + text for text in texts],
            add_special_tokens=True,
            truncation=True,
            max_length=self.spec.max_tokens,
        )["input_ids"]

    def _chunk_ids(
        self, texts: Sequence[str], *, kind: str, chunking: Chunking
    ) -> tuple[list[list[list[int]]], list[int]]:
        """Per text, the ids of each chunk (special tokens and prefix included), and how
        many chunks max_chunks dropped."""
        prefix_ids = self.tokenizer(self._prefix(kind), add_special_tokens=False)["input_ids"]
        head, tail = self._head, self._tail
        size = min(chunking.window, self.spec.max_tokens) - len(head) - len(tail) - len(prefix_ids)
        bodies = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        chunked, dropped = [], []
        for body in bodies:
            spans, cut = _capped_spans(len(body), size=size, chunking=chunking)
            chunked.append([head + prefix_ids + body[s:e] + tail for s, e in spans])
            dropped.append(cut)
        return chunked, dropped

    def tokenize_chunks(
        self, text: str, *, chunking: Chunking, kind: str = "document"
    ) -> list[list[int]]:
        """The model inputs (ids incl. special tokens) `iter_encode` builds for one long text."""
        return self._chunk_ids([text], kind=kind, chunking=chunking)[0][0]

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = np.full((len(rows), max(map(len, rows))), self._pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        input_ids, attention_mask = torch.from_numpy(ids), torch.from_numpy(mask)
        if self.device.type == "cuda":  # pinned memory lets the copy to the GPU be async
            input_ids, attention_mask = input_ids.pin_memory(), attention_mask.pin_memory()
        return input_ids, attention_mask

    def _bucket(self, rows: list[list[int]], *, batch_size: int) -> list[TokenBatch]:
        """Length-sorted padded batches; positions index into `rows`."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
        batches = []
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size]
            batches.append(TokenBatch(positions, *self._pad([rows[i] for i in positions])))
        return batches

    def tokenize_batches(
        self, texts: Sequence[str], *, batch_size: int, kind: str = "document"
    ) -> list[TokenBatch]:
        """Length-bucketed batches of the whole input (what `forward` consumes)."""
        return self._bucket(self._token_ids(texts, kind=kind), batch_size=batch_size)

    # -- model ----------------------------------------------------------------------------

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.device.type != "cuda":
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def forward(self, batch: TokenBatch) -> np.ndarray:
        """Bare model pass on a pre-tokenised batch: float32 (rows, d) in the batch's row order."""
        ids = batch.input_ids.to(self.device, non_blocking=True)
        mask = batch.attention_mask.to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            vectors = embed_hidden(
                hidden, mask, mode=self.spec.pooling, normalize=self.spec.normalize
            )
        return vectors.float().cpu().numpy()

    # -- public encoding ------------------------------------------------------------------

    def encode(
        self, texts: Sequence[str], *, kind: str = "document", batch_size: int | None = None
    ) -> np.ndarray:
        """float32 (len(texts), d) in input order; texts longer than max_tokens are truncated."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        size = batch_size or default_batch_size(self.device)
        for batch in self.tokenize_batches(texts, batch_size=size, kind=kind):
            out[batch.positions] = self.forward(batch)
        return out

    def _prepare(
        self,
        window: list[tuple[Hashable, str]],
        *,
        kind: str,
        batch_size: int,
        chunking: Chunking | None,
    ) -> list[tuple[list, TokenBatch, list]]:
        texts = [text for _, text in window]
        capped: list[tuple[Hashable, int]] = []
        if chunking is None:
            keys: list = [key for key, _ in window]
            rows = self._token_ids(texts, kind=kind)
        else:
            chunked, dropped = self._chunk_ids(texts, kind=kind, chunking=chunking)
            keys = [
                (key, i)
                for (key, _), chunks in zip(window, chunked, strict=True)
                for i in range(len(chunks))
            ]
            rows = [chunk for chunks in chunked for chunk in chunks]
            capped = [(key, n) for (key, _), n in zip(window, dropped, strict=True) if n]
        batches = self._bucket(rows, batch_size=batch_size)
        return [
            ([keys[i] for i in batch.positions], batch, capped if b == 0 else [])
            for b, batch in enumerate(batches)
        ]

    def iter_encode(
        self,
        items: Iterable[tuple[Hashable, str]],
        *,
        kind: str = "document",
        batch_size: int | None = None,
        window_batches: int = 16,
        chunking: Chunking | None = None,
    ) -> Iterator[EncodedBatch]:
        """Stream (key, text) items as encoded batches, in length order within each window.

        Keys are the items' keys, or (key, chunk_index) tuples when `chunking` is given.
        """
        size = batch_size or default_batch_size(self.device)
        windows = _windows(items, size=size * window_batches)

        def prepare(window: list[tuple[Hashable, str]]) -> list[tuple[list, TokenBatch, list]]:
            return self._prepare(window, kind=kind, batch_size=size, chunking=chunking)

        for keys, batch, capped in _prefetched(windows, prepare):
            yield EncodedBatch(
                keys=keys, vectors=self.forward(batch), n_tokens=batch.n_tokens, capped=capped
            )


# -- fake encoder ---------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _fake_vectors(texts: Sequence[str], *, dimension: int) -> np.ndarray:
    """Unit vectors that depend only on each text: splitmix64 over (hash(text), coordinate).

    Vectorised over the whole batch (no per-text RNG objects) so the fake stays far
    faster than any platform overhead it is used to measure.
    """
    seeds = np.fromiter((_seed(t) for t in texts), dtype=np.uint64, count=len(texts))
    z = seeds[:, None] + (np.arange(1, dimension + 1, dtype=np.uint64) * _GOLDEN)[None, :]
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    vectors = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24) - np.float32(0.5)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


# "fake", "fake:<dim>", "fake:<dim>@<ms>ms": the latency form sleeps that long per batch
# (using no CPU), standing in for an accelerator in worker-scaling benchmarks.
FAKE_NAME = re.compile(r"fake(?::(?P<dim>\d{1,6}))?(?:@(?P<ms>\d{1,5})ms)?")


def fake_encoder_parse(name: str) -> tuple[int, float] | None:
    """(dimension, seconds of latency per batch) for a fake encoder name, else None."""
    match = FAKE_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match["dim"] or 384), int(match["ms"] or 0) / 1000


class FakeEncoder:
    """Deterministic hash vectors with the Encoder interface: tests job mechanics, benchmarks
    platform overhead. Tokens are whitespace words; batches come out in input order."""

    def __init__(
        self, dimension: int = 384, *, max_tokens: int = 256, latency_s: float = 0.0
    ) -> None:
        self.spec = ModelSpec(path=f"fake:{dimension}", dimension=dimension, max_tokens=max_tokens)
        self.dimension = dimension
        self.latency_s = latency_s
        self.device = torch.device("cpu")
        self.tokenizer = None
        self.model = None

    def encode(
        self, texts: Sequence[str], *, kind: str = "document", batch_size: int | None = None
    ) -> np.ndarray:
        prefix = self.spec.query_prefix if kind == "query" else self.spec.document_prefix
        texts = [prefix + text for text in texts]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), 1024):  # blocks keep the uint64 scratch in cache
            out[start : start + 1024] = _fake_vectors(
                texts[start : start + 1024], dimension=self.dimension
            )
        return out

    def _chunks(self, text: str, chunking: Chunking) -> tuple[list[str], int]:
        words = text.split()
        size = min(chunking.window, self.spec.max_tokens)
        spans, dropped = _capped_spans(len(words), size=size, chunking=chunking)
        return [" ".join(words[s:e]) for s, e in spans], dropped

    def iter_encode(
        self,
        items: Iterable[tuple[Hashable, str]],
        *,
        kind: str = "document",
        batch_size: int | None = None,
        window_batches: int = 16,
        chunking: Chunking | None = None,
    ) -> Iterator[EncodedBatch]:
        for window in _windows(items, size=batch_size or default_batch_size("cpu")):
            capped: list[tuple[Hashable, int]] = []
            if chunking is None:
                keys, texts = [k for k, _ in window], [t for _, t in window]
            else:
                keys, texts = [], []
                for k, t in window:
                    chunks, dropped = self._chunks(t, chunking)
                    keys += [(k, i) for i in range(len(chunks))]
                    texts += chunks
                    if dropped:
                        capped.append((k, dropped))
            n_tokens = sum(len(t.split()) for t in texts)
            vectors = self.encode(texts, kind=kind)
            if self.latency_s:
                time.sleep(self.latency_s)  # the "accelerator" is busy; this core is free
            yield EncodedBatch(keys=keys, vectors=vectors, n_tokens=n_tokens, capped=capped)


# -- loading --------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else was meant as a directory."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _download(repo_id: str) -> str:
    """A hub snapshot: the local cache first, then the network with a short timeout."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=repo_id, allow_patterns=_HUB_FILES, local_files_only=True)
    except Exception:  # not cached: fall through to the network
        pass
    try:
        return snapshot_download(
            repo_id=repo_id, allow_patterns=_HUB_FILES, etag_timeout=_HUB_TIMEOUT_S
        )
    except Exception as exc:  # offline, unknown repo, gated, invalid id: all say the same thing
        raise ModelLoadError(
            f"could not fetch model {repo_id!r} from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "This machine may have no network access: download the model where there is "
            f"(e.g. `huggingface-cli download {repo_id} --local-dir DIR`), copy DIR here and "
            "register that local directory instead."
        ) from exc


def load_encoder(
    name_or_path: str | None = None, *, device: str | None = None
) -> Encoder | FakeEncoder:
    """None -> the bundled all-MiniLM-L6-v2; "fake" / "fake:DIM" / "fake:DIM@MSms" ->
    FakeEncoder; a local directory -> that model; anything else -> a Hugging Face hub id."""
    if name_or_path is None:
        return Encoder(read_model_spec(default_model_path()), device=device)
    fake = fake_encoder_parse(name_or_path)
    if fake is not None:
        return FakeEncoder(dimension=fake[0], latency_s=fake[1])
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return Encoder(read_model_spec(path), device=device)
    if _looks_like_path(name_or_path):
        raise ModelLoadError(f"no model directory at {path}")
    return Encoder(read_model_spec(_download(name_or_path)), device=device)
