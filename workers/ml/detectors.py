"""Adversarial-passage detectors: score passages against their own corpus, calibrate on it.

GASLITE passages are `message. trigger` where the trigger is tokens chosen for their
gradient, not their sense, and the passage is built to be a hub (near many queries). So:

- hubness: how many known queries (or centroids of them) would rank the passage in their
  top k, i.e. its cosine beats that query's k-th best real document;
- naturalness, from the corpus alone (no network model): bits per character under a
  character n-gram model, the share of words outside the corpus vocabulary, the share of
  adjacent word pairs the corpus never shows, the share of tokenizer word-piece fragments,
  and the density of symbols.

Each feature becomes a robust z-score against clean documents (median and a MAD-like
scale); the combined score is the largest z. Thresholds are order statistics of clean
scores at a chosen false-positive rate, on documents the language statistics did not see,
so the rate is what a new clean document meets.

Pure compute: numpy only, no Django, no embedhub imports, no model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

TEXT_FEATURES = (
    "char_perplexity",
    "oov_share",
    "unseen_bigram_share",
    "wordpiece_share",
    "symbol_density",
)
HUBNESS = "hubness"
COMBINED = "combined"
_WORD = re.compile(r"[^\W_]+")
_BOUNDARY = 2  # a byte that never appears in text: marks the start of each document
# A hit on a query of the corpus is 1 of a few hundred; floors keep a feature that is 0 for
# nearly every clean document from turning the first non-zero value into an infinite z.
_MIN_SCALE = {"hubness": 0.5, "oov_share": 0.01, "unseen_bigram_share": 0.01}

Tokenize = Callable[[Sequence[str]], list[list[str]]]


def words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def _hash32(items: Iterable[str]) -> np.ndarray:
    # Stable across processes (unlike hash()): the stored screen is read by other workers.
    out = [
        int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") for s in items
    ]
    return np.asarray(out, dtype=np.uint32)


def sorted_member(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Which of `values` are in the sorted array `sorted_values`: a binary search each,
    not np.isin's sort of both (the sorted side may hold millions, the other a block)."""
    values = np.asarray(values)
    if not len(sorted_values) or not len(values):
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[pos] == values


def _member(sorted_hashes: np.ndarray, items: Sequence[str]) -> np.ndarray:
    if not len(items):
        return np.zeros(0, dtype=bool)
    return sorted_member(_hash32(items), sorted_hashes)


# ------------------------------------------------------------------ character n-grams


class CharNgram:
    """Byte n-gram model of lower-cased text, counts hashed into fixed arrays (compact, and
    stable to store), interpolated order by order with a Dirichlet prior (the lower order's
    probability weighted by `alpha` pseudo-counts), add-one at the unigram."""

    def __init__(self, *, order: int = 4, buckets: int = 1 << 20, alpha: float = 3.0):
        if order < 1:
            raise ValueError("order must be at least 1")
        self.order, self.buckets, self.alpha = order, buckets, alpha
        # counts[m] holds the counts of (m+1)-grams; unigrams are indexed by the byte itself.
        self.counts = [np.zeros(256, np.int64)] + [
            np.zeros(buckets, np.int64) for _ in range(order - 1)
        ]

    @staticmethod
    def _bytes(text: str, pad: int) -> np.ndarray:
        raw = np.frombuffer(text.casefold().encode("utf-8", "replace"), dtype=np.uint8)
        return np.concatenate([np.full(pad, _BOUNDARY, np.uint8), raw]).astype(np.uint64)

    def _hashes(self, b: np.ndarray) -> list[np.ndarray]:
        """hashes[m][i]: bucket of the (m+1)-gram ending at byte i (i >= m)."""
        out = [b.astype(np.int64)]
        h = b.copy()
        mult = np.uint64(1_000_003)
        for m in range(1, self.order):
            h = h[:-1] * mult + b[m:]  # the (m+1)-gram ending at each position from m on
            h ^= h >> np.uint64(29)
            out.append(np.concatenate([np.zeros(m, np.int64), (h % self.buckets).astype(np.int64)]))
        return out

    def fit(self, texts: Iterable[str], *, batch_bytes: int = 1 << 22) -> CharNgram:
        """Count in batches of concatenated documents: one bincount per batch and order, not
        per document (a bincount costs the whole bucket array)."""
        batch: list[np.ndarray] = []
        size = 0
        for text in texts:
            batch.append(self._bytes(text, self.order - 1))
            size += len(batch[-1])
            if size >= batch_bytes:
                self._count(np.concatenate(batch))
                batch, size = [], 0
        if batch:
            self._count(np.concatenate(batch))
        return self

    def _count(self, b: np.ndarray) -> None:
        # Only n-grams ending at a real byte: each document starts with order - 1 boundary
        # bytes, so such an n-gram never reaches back into the previous document.
        real = b != _BOUNDARY
        for m, h in enumerate(self._hashes(b)):
            self.counts[m] += np.bincount(h[real], minlength=len(self.counts[m]))

    def bits_per_char(self, text: str) -> float:
        pad = self.order - 1
        b = self._bytes(text, pad)
        if len(b) <= pad:
            return 0.0
        hashes = self._hashes(b)
        idx = np.arange(pad, len(b))
        total = self.counts[0].sum()
        p = (self.counts[0][hashes[0][idx]] + 1.0) / (total + 256.0)
        for m in range(1, self.order):
            context = self.counts[m - 1][hashes[m - 1][idx - 1]]
            p = (self.counts[m][hashes[m][idx]] + self.alpha * p) / (context + self.alpha)
        return float(-np.log2(np.clip(p, 1e-12, 1.0)).mean())


# ------------------------------------------------------------------ corpus language stats


@dataclass
class CorpusLanguage:
    """What the corpus's own text says is normal: the n-gram model and the vocabulary."""

    ngram: CharNgram
    vocabulary: np.ndarray  # sorted uint32 hashes of the corpus's words
    bigrams: np.ndarray  # sorted uint32 hashes of its adjacent word pairs

    @classmethod
    def fit(cls, texts: Sequence[str], *, order: int = 4) -> CorpusLanguage:
        vocab: set[str] = set()
        pairs: set[str] = set()
        for text in texts:
            w = words(text)
            vocab.update(w)
            pairs.update(f"{a} {b}" for a, b in zip(w, w[1:], strict=False))
        return cls(
            ngram=CharNgram(order=order).fit(texts),
            vocabulary=np.unique(_hash32(sorted(vocab))),
            bigrams=np.unique(_hash32(sorted(pairs))),
        )

    def knows(self, word: str) -> bool:
        return bool(_member(self.vocabulary, [word.casefold()])[0])

    def features(self, texts: Sequence[str], *, tokenize: Tokenize | None = None) -> dict:
        """Per text, each naturalness feature (higher = less like the corpus)."""
        out = {name: np.zeros(len(texts)) for name in TEXT_FEATURES}
        pieces = tokenize(list(texts)) if tokenize is not None and len(texts) else None
        for i, text in enumerate(texts):
            w = words(text)
            pairs = [f"{a} {b}" for a, b in zip(w, w[1:], strict=False)]
            out["char_perplexity"][i] = self.ngram.bits_per_char(text)
            out["oov_share"][i] = 1.0 - _member(self.vocabulary, w).mean() if w else 1.0
            out["unseen_bigram_share"][i] = (
                1.0 - _member(self.bigrams, pairs).mean() if pairs else 1.0
            )
            out["symbol_density"][i] = symbol_density(text)
            if pieces is not None:
                out["wordpiece_share"][i] = wordpiece_share(pieces[i])
        if pieces is None:
            del out["wordpiece_share"]
        return out


def symbol_density(text: str) -> float:
    """Share of non-space characters that are neither letters nor digits."""
    chars = [c for c in text if not c.isspace()]
    return sum(not c.isalnum() for c in chars) / len(chars) if chars else 0.0


def wordpiece_share(pieces: Sequence[str]) -> float:
    """Share of tokenizer pieces that are word fragments (WordPiece '##' continuations)."""
    return sum(p.startswith("##") for p in pieces) / len(pieces) if pieces else 0.0


def hubness(
    vecs: np.ndarray, *, query_vecs: np.ndarray, kth_scores: np.ndarray, in_index: bool = False
) -> np.ndarray:
    """How many queries would rank each vector in their top k: its cosine beats the query's
    k-th best real score (ties count only for a vector already in the index, whose own score
    is among the real ones). Float32, like hub_reference's k-th scores: a vector scored
    in float64 could beat a k-th score that is its own float32 score rounded down."""
    # Queries x vectors, the orientation hub_reference scores in, transposed afterwards:
    # BLAS may round the product the other way round differently in the last bit.
    vectors = np.atleast_2d(np.asarray(vecs, np.float32))
    scores = (np.asarray(query_vecs, np.float32) @ vectors.T).T
    kth = np.asarray(kth_scores, np.float32)[None, :]
    # A vector's own k-th score recomputed in another BLAS block can still land one ulp
    # off: ties are judged within a few ulps of the k-th score.
    slack = 4 * np.spacing(np.abs(kth))
    hits = scores >= kth - slack if in_index else scores > kth + slack
    return hits.sum(axis=1).astype(np.float64)


@dataclass
class HubReference:
    """What the clean vectors say about the known queries: each query's k-th best score
    (-inf where fewer than k vectors), and each clean vector's own hubness (how many
    queries hold it in their top k), in the order the vectors came."""

    kth_scores: np.ndarray
    clean_hubness: np.ndarray
    k: int

    @property
    def n_clean(self) -> int:
        return len(self.clean_hubness)


def hub_reference(
    query_vecs: np.ndarray, blocks: Iterable[np.ndarray], *, k: int = 10
) -> HubReference:
    """One exact pass over blocks of clean (unit) vectors, cosine = dot.

    Memory holds queries x (k + block) scores, never queries x corpus: each query keeps
    its k best scores so far and the rows they came from. Counting those rows at the end
    gives every clean vector's in-index hubness with no second pass (a tie at the k-th
    score counts once, where `hubness(in_index=True)` would count every tied vector).
    Float32, like the search it stands for.
    """
    q = np.asarray(query_vecs, np.float32)
    best = np.full((len(q), k), -np.inf, np.float32)
    rows = np.full((len(q), k), -1, np.int64)
    offset = 0
    for block in blocks:
        block = np.asarray(block, np.float32)
        if not len(block):
            continue
        scores = q @ block.T
        # Only the queries this block can change: late blocks rarely beat a settled k-th.
        active = np.flatnonzero(scores.max(axis=1) > best.min(axis=1))
        if len(active):
            merged = np.concatenate([best[active], scores[active]], axis=1)
            top = np.argpartition(merged, merged.shape[1] - k, axis=1)[:, -k:]
            kept = np.take_along_axis(rows[active], np.minimum(top, k - 1), axis=1)
            rows[active] = np.where(top < k, kept, offset + top - k)
            best[active] = np.take_along_axis(merged, top, axis=1)
        offset += len(block)
    counts = np.bincount(rows[rows >= 0], minlength=offset).astype(np.float64)
    return HubReference(kth_scores=best.min(axis=1), clean_hubness=counts, k=k)


# ------------------------------------------------------------------ calibration


def threshold_at_fpr(clean: np.ndarray, fpr: float) -> float:
    """The score above which at most `fpr` of exchangeable clean documents fall.

    The ceil((n + 1)(1 - fpr))-th smallest clean score (the split-conformal quantile);
    flagging is strictly above it, so ties at the bar (many documents at 0) stay clean.
    With fewer than 1 / fpr documents that order statistic does not exist and the largest
    clean score is used: the rate is then at most about 1 / (n + 1), not `fpr`.
    """
    clean = np.sort(np.asarray(clean, np.float64))
    if not 0.0 < fpr < 1.0:
        raise ValueError("fpr must be strictly between 0 and 1")
    if not len(clean):
        return math.inf
    k = math.ceil((len(clean) + 1) * (1.0 - fpr))
    return float(clean[min(k, len(clean)) - 1])


@dataclass
class Calibration:
    """Robust z-scales per feature and the combined score's threshold at `fpr`."""

    features: tuple[str, ...]
    medians: dict[str, float]
    scales: dict[str, float]
    fpr: float
    threshold: float
    n_clean: int
    # Per-feature and combined thresholds at the reported rates, e.g. {"0.01": {...}}.
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, clean: dict[str, np.ndarray], *, fpr: float, report_fprs: Sequence[float] = ()
    ) -> Calibration:
        names = tuple(clean)
        medians, scales = {}, {}
        for name in names:
            x = np.asarray(clean[name], np.float64)
            med = float(np.median(x))
            mad = 1.4826 * float(np.median(np.abs(x - med)))
            spread = (float(np.quantile(x, 0.9)) - med) / 1.2816
            floor = _MIN_SCALE.get(name, 1e-6)
            medians[name], scales[name] = med, max(mad, spread, float(x.std()) * 0.5, floor)
        cal = cls(names, medians, scales, fpr, 0.0, len(next(iter(clean.values()), [])))
        combined = cal.combined(clean)
        cal.threshold = threshold_at_fpr(combined, fpr)
        for rate in report_fprs:
            per = {n: threshold_at_fpr(clean[n], rate) for n in names}
            cal.thresholds[str(rate)] = {**per, COMBINED: threshold_at_fpr(combined, rate)}
        return cal

    def z(self, feats: dict[str, np.ndarray], *, names=None) -> dict[str, np.ndarray]:
        return {
            n: (np.asarray(feats[n], np.float64) - self.medians[n]) / self.scales[n]
            for n in (names or self.features)
        }

    def combined(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """The largest robust z over the features: one odd feature is enough to flag."""
        return np.max(np.stack(list(self.z(feats).values())), axis=0)

    def as_dict(self) -> dict:
        return {
            "features": list(self.features),
            "medians": self.medians,
            "scales": self.scales,
            "fpr": self.fpr,
            "threshold": self.threshold,
            "n_clean": self.n_clean,
            "thresholds": self.thresholds,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(
            tuple(data["features"]),
            data["medians"],
            data["scales"],
            data["fpr"],
            data["threshold"],
            data["n_clean"],
            data.get("thresholds", {}),
        )


@dataclass
class HubBar:
    """The hubness threshold of one corpus at `fpr`: flag strictly above `threshold`
    hits; `z` puts hits on the robust-z scale of the other features."""

    threshold: float
    median: float
    scale: float
    fpr: float
    n_clean: int

    def flags(self, hits: np.ndarray) -> np.ndarray:
        return np.asarray(hits, np.float64) > self.threshold

    def z(self, hits: np.ndarray) -> np.ndarray:
        return (np.asarray(hits, np.float64) - self.median) / self.scale


def hub_bar(clean_hubness: np.ndarray, *, fpr: float, floor: float = 0.0) -> HubBar:
    """Calibrated on clean documents' hubness at `fpr`, never below `floor`: with the
    default 0 a passage that no known query ranks in its top k is never flagged, however
    rarely clean documents are hit."""
    clean = np.asarray(clean_hubness, np.float64)
    cal = Calibration.fit({HUBNESS: clean}, fpr=fpr)
    return HubBar(
        threshold=max(threshold_at_fpr(clean, fpr), float(floor)),
        median=cal.medians[HUBNESS],
        scale=cal.scales[HUBNESS],
        fpr=fpr,
        n_clean=len(clean),
    )


def split_fit_calibrate(
    n: int, *, seed: int = 0, fit_share: float = 0.5, test_share: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices for fitting the language stats, calibrating, and (optionally) testing the rate.

    Calibration documents must be unseen by the n-gram model and the vocabulary: a document
    the model was fitted on looks more natural than any new one, so thresholds set on it
    would flag far more than `fpr` of new clean documents."""
    order = np.random.default_rng(seed).permutation(n)
    n_fit = int(round(fit_share * n))
    n_test = int(round(test_share * n))
    return order[:n_fit], order[n_fit : n - n_test], order[n - n_test :]


# ------------------------------------------------------------------ the screen


@dataclass
class Screen:
    """A calibrated text screen for one corpus: flag a passage when its combined score is
    above the threshold. Hubness, which needs vectors and queries, is added by callers that
    have them: through `extra` features calibrated the same way (the audit), or on its own
    with `hub_reference` and `hub_bar` (the index build)."""

    language: CorpusLanguage
    calibration: Calibration
    heldout_fpr: float | None = None
    n_fit: int = 0

    def features(
        self,
        texts: Sequence[str],
        *,
        tokenize: Tokenize | None = None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        feats = self.language.features(texts, tokenize=tokenize)
        feats.update(extra or {})
        return {n: feats[n] for n in self.calibration.features}

    def scores(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        return self.calibration.combined(self.features(texts, **kwargs))

    def flags(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        return self.scores(texts, **kwargs) > self.calibration.threshold

    def naturalness_penalty(self, texts: Sequence[str]) -> np.ndarray:
        """For an adaptive attacker: how far above the clean median each text's text-only
        features are, in robust z units (0 for a text no odder than a typical document)."""
        feats = self.language.features(texts)  # no tokenizer: fast enough for every candidate
        names = [n for n in self.calibration.features if n in feats]
        z = self.calibration.z({n: feats[n] for n in names}, names=names)
        if not names:
            return np.zeros(len(texts))
        return np.max(np.stack([np.clip(z[n], 0, None) for n in names]), axis=0)

    # -- storage -------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        meta = {
            "calibration": self.calibration.as_dict(),
            "heldout_fpr": self.heldout_fpr,
            "n_fit": self.n_fit,
            "ngram": {"order": self.language.ngram.order, "alpha": self.language.ngram.alpha},
        }
        arrays = {f"counts{m}": c for m, c in enumerate(self.language.ngram.counts)}
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            vocabulary=self.language.vocabulary,
            bigrams=self.language.bigrams,
            **{k: v.astype(np.int32) for k, v in arrays.items()},
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Screen:
        with np.load(io.BytesIO(bytes(data))) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            ngram = CharNgram(
                order=meta["ngram"]["order"],
                buckets=len(z["counts1"]) if "counts1" in z else 1,
                alpha=meta["ngram"]["alpha"],
            )
            ngram.counts = [z[f"counts{m}"].astype(np.int64) for m in range(ngram.order)]
            language = CorpusLanguage(ngram, z["vocabulary"], z["bigrams"])
        return cls(
            language=language,
            calibration=Calibration.from_dict(meta["calibration"]),
            heldout_fpr=meta["heldout_fpr"],
            n_fit=meta["n_fit"],
        )


REPORT_FPRS = (0.01, 0.05)


def screen_fit(
    texts: Sequence[str],
    *,
    fpr: float = 0.01,
    tokenize: Tokenize | None = None,
    extra: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    fit_share: float = 0.5,
    test_share: float = 0.0,
    report_fprs: Sequence[float] = REPORT_FPRS,
) -> Screen:
    """Fit the language stats on part of the clean texts and calibrate on the rest.

    `extra` holds per-text features the caller computed (e.g. hubness of each document),
    aligned with `texts`. With `test_share`, that share is kept out of both and the
    combined threshold's false-positive rate on it is recorded as `heldout_fpr`.
    """
    if len(texts) < 4:
        raise ValueError(f"a screen needs at least 4 clean documents, got {len(texts)}")
    fit_idx, cal_idx, test_idx = split_fit_calibrate(
        len(texts), seed=seed, fit_share=fit_share, test_share=test_share
    )
    language = CorpusLanguage.fit([texts[i] for i in fit_idx])

    def feats(idx: np.ndarray) -> dict[str, np.ndarray]:
        f = language.features([texts[i] for i in idx], tokenize=tokenize)
        f.update({n: np.asarray(v, np.float64)[idx] for n, v in (extra or {}).items()})
        return f

    calibration = Calibration.fit(feats(cal_idx), fpr=fpr, report_fprs=report_fprs)
    screen = Screen(language=language, calibration=calibration, n_fit=len(fit_idx))
    if len(test_idx):
        screen.heldout_fpr = float(
            np.mean(calibration.combined(feats(test_idx)) > calibration.threshold)
        )
    return screen


def recall_report(
    *, clean: dict[str, np.ndarray], attack: dict[str, np.ndarray], calibration: Calibration
) -> dict:
    """Each feature's and the combined score's recall on attack passages at the reported
    false-positive rates, thresholds set on the clean scores given (held-out documents)."""
    clean = {**clean, COMBINED: calibration.combined(clean)}
    attack = {**attack, COMBINED: calibration.combined(attack)}
    out: dict = {}
    for rate in calibration.thresholds or {str(calibration.fpr): {}}:
        fpr = float(rate)
        row = {}
        for name in clean:
            bar = threshold_at_fpr(clean[name], fpr)
            row[name] = {
                "recall": float(np.mean(np.asarray(attack[name]) > bar))
                if len(attack[name])
                else None,
                "clean_fpr": float(np.mean(np.asarray(clean[name]) > bar)),
                "threshold": bar,
            }
        out[rate] = row
    return out


def defence_report(
    *,
    clean_texts: Sequence[str],
    attacks: dict[str, Sequence[str]],
    clean_extra: dict[str, np.ndarray] | None = None,
    attack_extra: dict[str, dict[str, np.ndarray]] | None = None,
    tokenize: Tokenize | None = None,
    seed: int = 0,
    fpr: float = 0.01,
) -> dict:
    """The defence against each named set of attack passages, from one corpus.

    Half the clean documents fit the language statistics, a quarter calibrate every
    threshold, a quarter measure the false-positive rate those thresholds really give.
    Two screens: "combined" (every feature, hubness included when given) and "text" (what
    ingest screening runs). Returns per attack set each detector's recall at 1 % and 5 %,
    and which passages each screen flags at `fpr`.
    """
    fit_idx, cal_idx, test_idx = split_fit_calibrate(
        len(clean_texts), seed=seed, fit_share=0.5, test_share=0.25
    )
    language = CorpusLanguage.fit([clean_texts[i] for i in fit_idx])

    def clean_feats(idx: np.ndarray) -> dict[str, np.ndarray]:
        f = language.features([clean_texts[i] for i in idx], tokenize=tokenize)
        f.update({n: np.asarray(v, np.float64)[idx] for n, v in (clean_extra or {}).items()})
        return f

    cal, test = clean_feats(cal_idx), clean_feats(test_idx)
    text_names = [n for n in cal if n in TEXT_FEATURES]
    screens = {
        COMBINED: Calibration.fit(cal, fpr=fpr, report_fprs=REPORT_FPRS),
        "text": Calibration.fit({n: cal[n] for n in text_names}, fpr=fpr),
    }
    out = {
        "n_clean": {"fit": len(fit_idx), "calibrate": len(cal_idx), "test": len(test_idx)},
        "features": list(cal),
        "fpr": fpr,
        "clean_test_fpr": {
            name: float(np.mean(c.combined(test) > c.threshold)) if len(test_idx) else None
            for name, c in screens.items()
        },
        "thresholds": {name: c.threshold for name, c in screens.items()},
        "attacks": {},
    }
    for name, texts in attacks.items():
        feats = language.features(list(texts), tokenize=tokenize)
        feats.update((attack_extra or {}).get(name, {}))
        out["attacks"][name] = {
            "n": len(texts),
            "recall": recall_report(clean=cal, attack=feats, calibration=screens[COMBINED]),
            "flagged": {s: (c.combined(feats) > c.threshold).tolist() for s, c in screens.items()},
            "scores": screens[COMBINED].combined(feats).round(3).tolist(),
        }
    return out
