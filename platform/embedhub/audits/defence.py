"""What the ingest screen and hubness would have caught of an audit's passages.

The defender's side of an audit: detectors (workers.ml.detectors) calibrated on the
corpus's own clean documents, each one's recall on the GASLITE passages and on the bare
message at 1 % and 5 % false positives, and held-out appeared@10 once the flagged passages
are screened out (a screened-out passage cannot appear). The defender's known queries, for
hubness, are the audit's held-in queries and the queries outside the concept: everything
but the held-out queries, which stand for the future queries the attack is judged on.
"""

from __future__ import annotations

import numpy as np

from embedhub.corpora import screening
from embedhub.corpora.selectors import clean_document_ids
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.selectors import document_ids_sample, document_texts, index_vectors_of
from workers.ml.detectors import HUBNESS, defence_report, hubness, screen_fit
from workers.ml.gaslite import evaluate_passages

MAX_CLEAN_DOCUMENTS = 20_000
HUB_K = 10


def clean_corpus(*, index: VectorIndex, seed: int) -> tuple[list[str], np.ndarray]:
    """A seeded sample of the corpus's non-quarantined documents: texts and vectors."""
    ids = document_ids_sample(corpus_id=index.corpus_id, n=MAX_CLEAN_DOCUMENTS)
    ids = clean_document_ids(corpus_id=index.corpus_id, document_ids=ids)
    vectors = index_vectors_of(index=index, document_ids=ids)
    rows = [
        r for r in document_texts(corpus_id=index.corpus_id, document_ids=ids) if r[0] in vectors
    ]
    order = np.random.default_rng(seed).permutation(len(rows))
    rows = [rows[i] for i in order]
    vecs = np.stack([vectors[r[0]] for r in rows]) if rows else np.zeros((0, index.dimension))
    return [r[2] for r in rows], vecs.astype(np.float32)


def attacker_screen(*, index: VectorIndex, seed: int):
    """The adaptive attacker's model of the screen: fitted like the defender's, from the
    same corpus (a white-box attacker who can read the corpus can do this too)."""
    texts, _ = clean_corpus(index=index, seed=seed)
    return screen_fit(texts, fpr=0.01, tokenize=screening.tokenize, seed=seed)


def _kth(topk: np.ndarray) -> np.ndarray:
    return topk[:, min(HUB_K, topk.shape[1]) - 1]


def audit_defence(
    *,
    index: VectorIndex,
    seed: int,
    refs: dict[str, np.ndarray],
    texts: dict[str, list[str]],
    known: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
) -> dict:
    """The defence report: `refs`/`texts` name the passage sets (vectors and texts),
    `known` the defender's query vectors and their real top-k scores, `held_out` the
    judged queries and theirs."""
    clean_texts, clean_vecs = clean_corpus(index=index, seed=seed)
    if len(clean_texts) < 8:
        return {"available": False, "reason": f"{len(clean_texts)} clean documents: too few"}
    known_vecs, known_topk = known
    kth = _kth(known_topk)
    report = defence_report(
        clean_texts=clean_texts,
        attacks=texts,
        clean_extra={
            HUBNESS: hubness(clean_vecs, query_vecs=known_vecs, kth_scores=kth, in_index=True)
        },
        attack_extra={
            name: {HUBNESS: hubness(refs[name], query_vecs=known_vecs, kth_scores=kth)}
            for name in texts
        },
        tokenize=screening.tokenize,
        seed=seed,
    )
    queries, topk = held_out
    for name, attack in report["attacks"].items():
        attack["appeared@10_screened"] = {
            screen: _appeared_unflagged(refs[name], flags, queries, topk)
            for screen, flags in attack["flagged"].items()
        }
    report["available"] = True
    report["n_known_queries"] = int(len(known_vecs))
    return report


def _appeared_unflagged(vecs, flags, queries, topk) -> float:
    kept = np.asarray(vecs)[~np.asarray(flags, dtype=bool)]
    if not len(kept):
        return 0.0
    return evaluate_passages(passage_vecs=kept, query_vecs=queries, topk_scores=topk)["appeared@10"]
