"""GASLITE adversarial passages (Ben-Tov & Sharif 2024), scaled to CPU.

An attacker who knows a concept (a set of queries) writes a passage
`[CLS] message . trigger [SEP]` and optimises the trigger tokens so that the passage
embedding moves toward the centroid of the concept's query embeddings. Inserted into an
index, such passages show up in the top results for unseen queries of the concept; the
platform runs this as a robustness audit. See ../shared/METHODS.md (beside the repository), section GASLITE.

Pure compute: no Django, no embedhub imports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from workers.ml.pooling import embed_hidden
from workers.ml.spec import ModelSpec, read_model_spec

DEFAULT_KS = (1, 3, 5, 10, 20, 50, 100)
# "!" is the GCG/GASLITE dummy token: short, a single id, and it re-tokenises to itself.
DUMMY_TOKEN = "!"


@dataclass
class AttackConfig:
    """Search settings. Defaults are the CPU-scaled ones; the paper's are noted."""

    trigger_len: int = 30
    iterations: int = 30  # paper 100
    positions_per_iter: int = 10  # paper 20
    candidates_top: int = 256  # top-k tokens per position from the gradient (paper 256)
    n_candidates: int = 32  # half top-ranked, half sampled from the rest (paper 64 + 64)
    grad_copies: int = 10  # paper 50
    time_limit_s: float | None = None
    seed: int = 0
    # "message": the trigger repeats the message tokens (the paper continues the message with
    # a language model; we have none on the box, and repeating keeps the passage on topic and
    # starts from a higher cosine than a dummy token). "dummy": trigger_len copies of "!".
    init: str = "message"
    # Adaptive attacker (against the ingest screen): candidates are scored by cosine minus
    # naturalness_weight x the detector's penalty of the decoded passage. 0: plain GASLITE.
    naturalness_weight: float = 0.0


@dataclass
class AttackResult:
    text: str
    token_ids: list[int]  # without [CLS]/[SEP]; tokenizer(text) gives exactly these
    objective_curve: list[float]  # best cosine so far after each iteration
    initial_cosine: float
    best_cosine: float
    iterations_run: int
    seconds: float
    trigger_ids: list[int] = field(default_factory=list)
    best_objective: float | None = None  # cosine minus the naturalness term, when adaptive


def split_held_in_out(ids: Sequence, *, held_in: float = 0.5, seed: int = 0) -> tuple[list, list]:
    """Random split; held-in queries are what the attacker knows, held-out what it is judged on."""
    if not 0.0 < held_in < 1.0:
        raise ValueError("held_in must be strictly between 0 and 1")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_in = int(round(held_in * len(ids)))
    items = list(ids)
    return [items[i] for i in order[:n_in]], [items[i] for i in order[n_in:]]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def kmeans_targets(query_vecs: np.ndarray, *, n: int, seed: int = 0) -> np.ndarray:
    """n unit-norm attack targets, one per passage of the budget.

    Summed cosine to a cluster's queries equals cosine to the cluster mean up to a constant,
    so the (re-normalised) centroid is the whole objective for that cluster.
    """
    vecs = _unit(np.asarray(query_vecs, dtype=np.float64))
    if n < 1 or n > len(vecs):
        raise ValueError(f"n must be in [1, {len(vecs)}], got {n}")
    if n == 1:
        return _unit(vecs.mean(axis=0, keepdims=True)).astype(np.float32)
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n, n_init=10, random_state=seed).fit(vecs)
    return _unit(km.cluster_centers_).astype(np.float32)


def _allowed_mask(tokenizer, *, allow_continuations: bool) -> torch.Tensor:
    """Tokens the search may place in the trigger.

    Special tokens and [unusedN] slots never appear in real text; non-ASCII / non-printable
    tokens are excluded as in the reference. '##' continuation pieces are excluded by default:
    they glue onto the previous token when decoded, so the text usually re-tokenises to
    different ids and the candidate is dropped anyway, wasting a scoring slot.
    """
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    mask = torch.zeros(len(vocab), dtype=torch.bool)
    for i, tok in enumerate(vocab):
        if i in special or not tok or (tok.startswith("[") and tok.endswith("]")):
            continue
        if not (tok.isascii() and tok.isprintable()) or tok.strip() != tok:
            continue
        if tok.startswith("##") and not allow_continuations:
            continue
        mask[i] = True
    return mask


class Attacker:
    """A frozen encoder plus everything the token search needs about its vocabulary."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        tokenizer,
        spec: ModelSpec,
        device: str = "cpu",
        allow_continuations: bool = False,
    ) -> None:
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.embedding_matrix = self.model.get_input_embeddings().weight  # (vocab, dim)
        self.allowed = _allowed_mask(tokenizer, allow_continuations=allow_continuations).to(device)
        self._allowed_ids = torch.nonzero(self.allowed).squeeze(-1)

    def vocabulary_mask(self, keep: Callable[[str], bool]) -> torch.Tensor:
        """The allowed tokens that `keep` accepts (e.g. words the corpus itself uses)."""
        vocab = self.tokenizer.convert_ids_to_tokens(self._allowed_ids.tolist())
        mask = torch.zeros_like(self.allowed)
        kept = [
            int(i) for i, tok in zip(self._allowed_ids.tolist(), vocab, strict=True) if keep(tok)
        ]
        mask[torch.tensor(kept, dtype=torch.long, device=mask.device)] = True
        return mask

    @classmethod
    def from_path(cls, path: str | Path, *, device: str | None = None, **kwargs) -> Attacker:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        spec = read_model_spec(path)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path))
        return cls(model=model, tokenizer=tokenizer, spec=spec, device=device, **kwargs)

    # -- embedding -------------------------------------------------------------------------

    @torch.no_grad()
    def embed_texts(
        self, texts: Sequence[str], *, kind: str = "document", batch_size: int = 64
    ) -> np.ndarray:
        """Embed text exactly as the platform indexes it (prefix, truncation, pooling)."""
        prefix = self.spec.query_prefix if kind == "query" else self.spec.document_prefix
        out = []
        for start in range(0, len(texts), batch_size):
            batch = [prefix + t for t in texts[start : start + batch_size]]
            enc = self.tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=self.spec.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            out.append(self._embed_ids(enc["input_ids"], enc["attention_mask"]).cpu())
        if not out:
            return np.zeros((0, self.spec.dimension), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def _embed_ids(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return embed_hidden(hidden, mask, mode=self.spec.pooling, normalize=True)

    @torch.no_grad()
    def _cosines(self, seqs: torch.Tensor, target: torch.Tensor, chunk: int = 128) -> torch.Tensor:
        """Exact cosine of full id sequences (all the same length, so no padding) to target."""
        scores = []
        for start in range(0, len(seqs), chunk):
            ids = seqs[start : start + chunk]
            scores.append(self._embed_ids(ids, torch.ones_like(ids)) @ target)
        return torch.cat(scores)

    # -- tokens <-> text -------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)

    def _round_trips(self, triggers: list[list[int]]) -> list[bool]:
        """Which triggers survive decode -> encode unchanged (one batched tokenizer call).

        The prefix ends in "." (punctuation always splits), so checking the trigger alone is
        equivalent to checking the whole passage.
        """
        texts = [self._decode(t) for t in triggers]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [list(e) == list(t) for e, t in zip(encoded, triggers, strict=True)]

    def _initial_trigger(self, message: str, config: AttackConfig) -> list[int]:
        dummy = self._encode(DUMMY_TOKEN)
        if config.init == "dummy":
            return dummy * config.trigger_len
        if config.init != "message":
            raise ValueError(f"unknown init {config.init!r}: use 'message' or 'dummy'")
        msg = self._encode(message) or dummy
        trigger = (msg * (config.trigger_len // len(msg) + 1))[: config.trigger_len]
        # A cut inside a word (or a glued '##' piece) may not round-trip: pad the tail with
        # dummies until it does, so the search starts from a passage that is real text.
        for keep in range(config.trigger_len, -1, -1):
            candidate = trigger[:keep] + dummy * (config.trigger_len - keep)
            if self._round_trips([candidate])[0]:
                return candidate
        return dummy * config.trigger_len

    # -- the attack ------------------------------------------------------------------------

    def _head_ids(self, message: str) -> list[int]:
        cls_id = self.tokenizer.cls_token_id
        return [cls_id] + self._encode(self.spec.document_prefix + message + ".")

    def _passage_text(self, message: str, trigger: list[int]) -> str:
        return f"{message}. {self._decode(trigger)}"

    def _trigger_gradient(
        self, seq: torch.Tensor, sl: slice, target: torch.Tensor, config: AttackConfig, rng, search
    ) -> torch.Tensor:
        """Averaged, row-normalised d(cosine)/d(one-hot trigger), shape (trigger_len, vocab)."""
        copies = seq.repeat(config.grad_copies, 1)
        ids = search.allowed_ids
        for c in range(1, config.grad_copies):  # copy 0 is the passage itself
            pos = sl.start + int(rng.integers(config.trigger_len))
            copies[c, pos] = ids[int(rng.integers(len(ids)))]
        weights = self.embedding_matrix
        one_hot = F.one_hot(copies[:, sl], num_classes=weights.shape[0]).to(weights.dtype)
        one_hot.requires_grad_(True)
        embeds = self.embedding_matrix[copies].detach()
        embeds = torch.cat([embeds[:, : sl.start], one_hot @ weights, embeds[:, sl.stop :]], dim=1)
        mask = torch.ones_like(copies)
        hidden = self.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        (
            embed_hidden(hidden, mask, mode=self.spec.pooling, normalize=True) @ target
        ).sum().backward()
        grad = one_hot.grad
        grad = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return grad.mean(dim=0)

    def _candidate_tokens(
        self, top: torch.Tensor, current: int, config: AttackConfig, rng
    ) -> list[int]:
        """Half the best-ranked tokens plus half sampled from the rest of the top-k."""
        n_top = min(config.n_candidates // 2, len(top))
        rest = top[n_top:]
        n_sampled = min(config.n_candidates - n_top, len(rest))
        picked = rng.choice(len(rest), size=n_sampled, replace=False) if n_sampled else []
        tokens = top[:n_top].tolist() + [int(rest[i]) for i in picked]
        return [t for t in dict.fromkeys(tokens) if t != current]

    def _greedy_position(
        self,
        seq: torch.Tensor,
        sl: slice,
        pos: int,
        tokens: list[int],
        target: torch.Tensor,
        search,
    ) -> tuple[torch.Tensor, float]:
        """Try every candidate token at one position; the current passage is candidate 0."""
        cands = seq.repeat(len(tokens) + 1, 1)
        cands[1:, sl.start + pos] = torch.tensor(tokens, device=seq.device)
        ok = self._round_trips([c[sl].tolist() for c in cands])
        ok[0] = True  # the current passage already round-trips
        cands = cands[torch.tensor(ok, device=seq.device)]
        scores = search.objective(self, cands, sl, target)
        best = int(torch.argmax(scores))
        return cands[best : best + 1].clone(), float(scores[best])

    def attack(
        self,
        *,
        target: np.ndarray,
        message: str,
        config: AttackConfig | None = None,
        on_iteration: Callable[[int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        penalty: Callable[[list[str]], np.ndarray] | None = None,
        vocabulary: torch.Tensor | None = None,
    ) -> AttackResult:
        """Optimise one passage toward `target` (a query-space direction; normalised here).

        Adaptive (against a detector): `penalty` scores decoded passages (higher = more
        detectable) and is subtracted, times config.naturalness_weight, from the cosine;
        `vocabulary` (a mask from vocabulary_mask) restricts the tokens the search may place.
        """
        config = config or AttackConfig()
        allowed = self.allowed if vocabulary is None else self.allowed & vocabulary
        search = _Search(
            allowed=allowed,
            allowed_ids=torch.nonzero(allowed).squeeze(-1),
            message=message,
            penalty=penalty if config.naturalness_weight else None,
            weight=config.naturalness_weight,
        )
        started = time.monotonic()
        rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        tgt = F.normalize(torch.as_tensor(target, dtype=torch.float32).reshape(-1), dim=0)
        tgt = tgt.to(self.device)

        head = self._head_ids(message)
        trigger = self._initial_trigger(message, config)
        ids = head + trigger + [self.tokenizer.sep_token_id]
        if len(ids) > self.spec.max_tokens:
            raise ValueError(
                f"passage is {len(ids)} tokens, over the model's {self.spec.max_tokens}: "
                "shorten the message or the trigger"
            )
        sl = slice(len(head), len(head) + config.trigger_len)
        seq = torch.tensor([ids], device=self.device)
        initial = float(self._cosines(seq, tgt)[0])
        best_seq, best = seq.clone(), float(search.objective(self, seq, sl, tgt)[0])
        curve: list[float] = []

        def out_of_time() -> bool:
            late = (
                config.time_limit_s is not None and time.monotonic() - started > config.time_limit_s
            )
            return late or (should_stop is not None and should_stop())

        for it in range(config.iterations):
            if out_of_time():
                break
            seq, best_seq, best = self._iteration(
                seq, sl, tgt, config, rng, best_seq, best, out_of_time, search
            )
            curve.append(best)
            if on_iteration is not None:
                on_iteration(it, best)

        trigger_ids = best_seq[0, sl].tolist()
        token_ids = best_seq[0, 1:-1].tolist()
        text = self._passage_text(message, trigger_ids)
        assert self._encode(self.spec.document_prefix + text) == token_ids, (
            "passage must round-trip"
        )
        best_cosine = best if search.penalty is None else float(self._cosines(best_seq, tgt)[0])
        return AttackResult(
            text=text,
            token_ids=token_ids,
            objective_curve=curve,
            initial_cosine=initial,
            best_cosine=best_cosine,
            best_objective=None if search.penalty is None else best,
            iterations_run=len(curve),
            seconds=time.monotonic() - started,
            trigger_ids=trigger_ids,
        )

    def _iteration(self, seq, sl, tgt, config, rng, best_seq, best, out_of_time, search):
        """One gradient step plus a multi-position greedy sweep; returns the new state."""
        grad = self._trigger_gradient(seq, sl, tgt, config, rng, search)
        grad[:, ~search.allowed] = -torch.inf
        top = grad.topk(min(config.candidates_top, int(search.allowed.sum())), dim=-1).indices
        n_pos = min(config.positions_per_iter, config.trigger_len)
        for pos in rng.choice(config.trigger_len, size=n_pos, replace=False):
            pos = int(pos)
            tokens = self._candidate_tokens(top[pos], int(seq[0, sl.start + pos]), config, rng)
            seq, score = self._greedy_position(seq, sl, pos, tokens, tgt, search)
            if score > best:
                best_seq, best = seq.clone(), score
            if out_of_time():
                break
        return seq, best_seq, best


@dataclass
class _Search:
    """What one attack may place and what it maximises."""

    allowed: torch.Tensor
    allowed_ids: torch.Tensor
    message: str
    penalty: Callable[[list[str]], np.ndarray] | None = None
    weight: float = 0.0

    def objective(self, attacker: Attacker, seqs: torch.Tensor, sl: slice, target) -> torch.Tensor:
        scores = attacker._cosines(seqs, target)
        if self.penalty is None:
            return scores
        texts = [attacker._passage_text(self.message, s[sl].tolist()) for s in seqs]
        cost = torch.as_tensor(self.penalty(texts), dtype=scores.dtype, device=scores.device)
        return scores - self.weight * cost


def evaluate_passages(
    *,
    passage_vecs: np.ndarray,
    query_vecs: np.ndarray,
    topk_scores: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """Where the adversarial passages would land in each query's real ranking.

    topk_scores (n_queries x K, descending) are the real index's best scores per query. The
    best passage for a query ranks 1 + (number of real scores >= its score): a tie is not a
    win, so it "appears at k" exactly when it beats the k-th real score.
    """
    topk = np.asarray(topk_scores, dtype=np.float64)
    passages = np.atleast_2d(np.asarray(passage_vecs, dtype=np.float64))
    scores = np.asarray(query_vecs, dtype=np.float64) @ passages.T  # (Q, P)
    best = scores.max(axis=1)
    ranks = 1 + (topk >= best[:, None]).sum(axis=1)  # capped at K + 1 by construction
    depth = topk.shape[1]
    appeared = {f"appeared@{k}": float(np.mean(best > topk[:, k - 1])) for k in ks if k <= depth}
    return {
        **appeared,
        "mrr@10": float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0))),
        "mean_best_rank": float(ranks.mean()),
        "best_ranks": ranks.astype(int).tolist(),
        "n_queries": int(len(ranks)),
        "depth": int(depth),
    }
