"""Adversarial-passage screening at ingest (a corpus setting, off by default).

The corpus's screen (workers.ml.detectors) is fitted from its own non-quarantined documents
and calibrated on a held-out part of them at the corpus's false-positive rate. An ingest
scores every new or changed document of the upload before the upsert; those above the
threshold are stored quarantined (out of search and evaluation, listed for the owner to
approve or reject) and the job's result names them. Nothing is dropped.

Only text features run at ingest: hubness needs the documents' vectors and the corpus's
queries, which an ingest does not have yet. The index build adds it (vectors/hub_screen.py):
once a screened corpus's vectors are written, the documents scored here that the index
has not yet scored by hubness are, and those that too many known queries would rank in
their top 10 are quarantined through `documents_hubness_record` below. The audit reports
both (audits/defence.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

from django.db import connection, transaction

from embedhub.corpora.models import Corpus, CorpusScreen, Document, QuarantineDecision
from workers.ml.detectors import HUBNESS, Screen, screen_fit

MIN_SCREEN_DOCUMENTS = 20
MAX_FIT_DOCUMENTS = 20_000  # a seeded sample past this: the statistics settle long before
REFIT_GROWTH = 2.0  # refit after an ingest once the clean corpus has doubled
MAX_LISTED_IDS = 10_000
SCREEN_BATCH = 2_000
# screen_features key naming the index whose vectors a document's hubness was scored on:
# bookkeeping, not a feature. An ingest that changes the document rewrites its features,
# so a changed document is scored again at the next build.
HUBNESS_INDEX = "hubness_index"


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    from workers.ml.spec import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    tokenizer.model_max_length = 10**9  # only counting pieces: no model sees these ids
    return tokenizer


def tokenize(texts) -> list[list[str]]:
    """Word pieces of the platform's bundled model (what its indexes tokenise with)."""
    tok = _tokenizer()
    ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    return [tok.convert_ids_to_tokens(row) for row in ids]


def document_screen_text(title: str, text: str) -> str:
    return f"{title} {text}".strip() if title else text


def _clean_texts(corpus_id: int) -> tuple[list[str], int]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM corpora_document WHERE corpus_id = %s AND NOT quarantined",
            [corpus_id],
        )
        total = cur.fetchone()[0]
        cur.execute(
            "SELECT title, text FROM corpora_document WHERE corpus_id = %s AND NOT quarantined"
            " ORDER BY md5(id::text) LIMIT %s",
            [corpus_id, MAX_FIT_DOCUMENTS],
        )
        return [document_screen_text(t, x) for t, x in cur.fetchall()], total


def corpus_screen_fit(*, corpus: Corpus) -> CorpusScreen | None:
    """Fit and store the corpus's screen from its clean documents; None when it has fewer
    than MIN_SCREEN_DOCUMENTS to calibrate on."""
    texts, total = _clean_texts(corpus.pk)
    if len(texts) < MIN_SCREEN_DOCUMENTS:
        return None
    screen = screen_fit(texts, fpr=corpus.screening_fpr, tokenize=tokenize, seed=corpus.pk)
    row, _ = CorpusScreen.objects.update_or_create(
        corpus=corpus,
        defaults={
            "data": screen.to_bytes(),
            "fpr": corpus.screening_fpr,
            "threshold": screen.calibration.threshold,
            "features": list(screen.calibration.features),
            "n_documents": total,
            "heldout_fpr": screen.heldout_fpr,
        },
    )
    return row


def corpus_screen_load(*, corpus_id: int) -> tuple[CorpusScreen, Screen] | None:
    row = CorpusScreen.objects.filter(corpus_id=corpus_id).first()
    return (row, Screen.from_bytes(row.data)) if row else None


def _stale(row: CorpusScreen | None, corpus: Corpus) -> bool:
    return row is None or abs(row.fpr - corpus.screening_fpr) > 1e-12


@dataclass
class IngestScreen:
    """One ingest's screening: scores the staged new or changed documents on the import's
    cursor before the upsert, marks the flagged ones after it."""

    screen: Screen | None
    row: CorpusScreen | None
    skipped: str = ""
    screened: int = 0
    quarantined: list[str] = field(default_factory=list)

    def stage(self, cur, *, corpus_id: int) -> None:
        if self.screen is None:
            return
        cur.execute("DROP TABLE IF EXISTS screen_results")
        cur.execute(
            "CREATE TEMP TABLE screen_results (external_id text PRIMARY KEY, score float8,"
            " quarantined bool, features jsonb) ON COMMIT DROP"
        )
        # A server-side cursor on the import's connection: the upload is read in batches.
        with cur.connection.cursor(name="screen_staged") as staged:
            staged.execute(
                "SELECT s.external_id, s.title, s.text FROM ingest_docs s"
                " LEFT JOIN corpora_document d"
                "  ON d.corpus_id = %s AND d.external_id = s.external_id"
                " WHERE d.id IS NULL OR d.content_hash <> s.content_hash ORDER BY s.line_no",
                [corpus_id],
            )
            while rows := staged.fetchmany(SCREEN_BATCH):
                self._score(cur, rows)

    def _score(self, cur, rows: list[tuple]) -> None:
        texts = [document_screen_text(title, text) for _, title, text in rows]
        feats = self.screen.features(texts, tokenize=tokenize)
        scores = self.screen.calibration.combined(feats)
        threshold = self.screen.calibration.threshold
        with cur.copy(
            "COPY screen_results (external_id, score, quarantined, features) FROM STDIN"
        ) as copy:
            for i, (external_id, _, _) in enumerate(rows):
                flagged = bool(scores[i] > threshold)
                features = {name: round(float(v[i]), 5) for name, v in feats.items()}
                copy.write_row((external_id, float(scores[i]), flagged, json.dumps(features)))
                if flagged:
                    self.quarantined.append(external_id)
        self.screened += len(rows)

    def apply(self, cur, *, corpus_id: int) -> None:
        if self.screen is None:
            return
        # A changed document that now passes leaves quarantine; one that fails enters it.
        cur.execute(
            "UPDATE corpora_document d SET quarantined = r.quarantined, screen_score = r.score,"
            " screen_features = r.features FROM screen_results r"
            " WHERE d.corpus_id = %s AND d.external_id = r.external_id",
            [corpus_id],
        )
        cur.execute("DROP TABLE screen_results")

    def result(self) -> dict:
        if self.screen is None:
            return {"enabled": True, "screened": 0, "quarantined": 0, "skipped": self.skipped}
        return {
            "enabled": True,
            "fpr": self.row.fpr,
            "threshold": self.row.threshold,
            "features": self.row.features,
            "screened": self.screened,
            "quarantined": len(self.quarantined),
            "quarantined_ids": self.quarantined[:MAX_LISTED_IDS],
            "quarantined_ids_truncated": len(self.quarantined) > MAX_LISTED_IDS,
        }


def ingest_screen_prepare(*, corpus_id: int) -> IngestScreen | None:
    """The screen an ingest applies (fitted now if missing or set at another rate), None
    when screening is off. A corpus too small to calibrate on is imported unscreened, and
    the result says so."""
    corpus = Corpus.objects.get(pk=corpus_id)
    if not corpus.screening_enabled:
        return None
    loaded = corpus_screen_load(corpus_id=corpus_id)
    if loaded is None or _stale(loaded[0], corpus):
        row = corpus_screen_fit(corpus=corpus)
        loaded = (row, Screen.from_bytes(row.data)) if row else None
    if loaded is None:
        return IngestScreen(
            screen=None,
            row=None,
            skipped=f"the corpus had fewer than {MIN_SCREEN_DOCUMENTS} clean documents to "
            "calibrate a screen on, so this upload was not screened; the screen is fitted "
            "from the corpus once it has enough",
        )
    return IngestScreen(screen=loaded[1], row=loaded[0])


def corpus_screen_refresh(*, corpus_id: int) -> dict | None:
    """After an ingest: fit the screen if screening is on and there is none yet, it was set
    at another rate, or the clean corpus has grown REFIT_GROWTH times since."""
    corpus = Corpus.objects.get(pk=corpus_id)
    if not corpus.screening_enabled:
        return None
    row = CorpusScreen.objects.filter(corpus_id=corpus_id).first()
    clean = Document.objects.filter(corpus_id=corpus_id, quarantined=False).count()
    if not _stale(row, corpus) and clean < REFIT_GROWTH * row.n_documents:
        return {"refit": False, "n_documents": row.n_documents}
    fitted = corpus_screen_fit(corpus=corpus)
    return {"refit": fitted is not None, "n_documents": fitted.n_documents if fitted else clean}


def screen_features_shown(features: dict | None) -> list[tuple[str, object]]:
    """A document's screen features as (name, value), without the bookkeeping keys."""
    return [(name, value) for name, value in (features or {}).items() if name != HUBNESS_INDEX]


@dataclass
class HubnessRecorded:
    quarantined: list[str]  # external ids this quarantined (they were searchable)
    already_quarantined: int  # over the bar, but already held back by the text screen
    approved: int  # over the bar, left searchable: their owner approved this version


def documents_hubness_record(
    *,
    corpus_id: int,
    index_id: int,
    document_ids: list[int],
    content_hashes: list[str],
    hubness: list[float],
    z: list[float],
    flagged: list[bool],
) -> HubnessRecorded:
    """Store each document's hubness on index `index_id` in its screen_features and hold
    back the flagged ones (screen_score becomes their hubness robust z where that is the
    larger). A document changed since its vector was read is left alone (the content hash
    must still match), and so is one its owner approved in this text: approving is a
    decision about that text (QuarantineDecision.content_hash), not to be undone by the
    next build nor by a re-upload that changes only its metadata. updated_at stays as it
    is, so that the ingest's and this bookkeeping do not look like a change.

    `hold` is decided on the statement's snapshot. Under READ COMMITTED a row another
    transaction changes meanwhile (an approval, a new text) is re-read when the update
    reaches it, so the outer WHERE asks for it to be as the snapshot saw it: a changed row
    is skipped, not overwritten, and the next build scores it."""
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE corpora_document d SET"
            " screen_features = coalesce(d.screen_features, '{}'::jsonb)"
            "  || jsonb_build_object(%s::text, r.hubness, %s::text, %s::int),"
            " screen_score = CASE WHEN r.hold THEN greatest(d.screen_score, r.z)"
            "  ELSE d.screen_score END,"
            " quarantined = d.quarantined OR r.hold"
            " FROM (SELECT u.id, u.hubness, u.z, u.flagged, x.quarantined AS was,"
            "  x.content_hash, x.updated_at,"
            "  u.flagged AND NOT EXISTS (SELECT 1 FROM corpora_quarantinedecision q"
            "   WHERE q.corpus_id = x.corpus_id AND q.external_id = x.external_id"
            "   AND q.decision = %s AND q.content_hash = x.content_hash) AS hold"
            "  FROM unnest(%s::bigint[], %s::text[], %s::float8[], %s::float8[], %s::bool[])"
            "   AS u(id, content_hash, hubness, z, flagged)"
            "  JOIN corpora_document x ON x.id = u.id AND x.corpus_id = %s"
            "   AND x.content_hash = u.content_hash) r"
            " WHERE d.id = r.id AND d.content_hash = r.content_hash"
            "  AND d.updated_at = r.updated_at AND d.quarantined = r.was"
            " RETURNING d.external_id, r.flagged, r.hold, r.was",
            [
                HUBNESS,
                HUBNESS_INDEX,
                index_id,
                QuarantineDecision.Decision.APPROVED.value,
                [int(i) for i in document_ids],
                list(content_hashes),
                [float(h) for h in hubness],
                [round(float(v), 5) for v in z],
                [bool(f) for f in flagged],
                corpus_id,
            ],
        )
        rows = cur.fetchall()
    return HubnessRecorded(
        quarantined=sorted(ext for ext, _, hold, was in rows if hold and not was),
        already_quarantined=sum(1 for _, _, hold, was in rows if hold and was),
        approved=sum(1 for _, flag, hold, _ in rows if flag and not hold),
    )


# ------------------------------------------------------------------ owner actions


def corpus_screening_update(*, corpus: Corpus, enabled: bool, fpr: float | None = None) -> Corpus:
    """Turn screening on or off, or change its rate (the screen is refitted at the next
    ingest, or now with corpus_screen_fit)."""
    corpus.screening_enabled = bool(enabled)
    if fpr is not None:
        corpus.screening_fpr = float(fpr)
    corpus.save(update_fields=["screening_enabled", "screening_fpr", "updated_at"])
    return corpus


def document_quarantine_approve(*, document: Document, user) -> QuarantineDecision:
    """Release a quarantined document: it is searchable again at once (its vectors were
    built while it waited). The approval is of its current text: an index build does not
    quarantine it again by hubness until that text changes."""
    with transaction.atomic():
        document.quarantined = False
        document.save(update_fields=["quarantined", "updated_at"])
        return _decision_record(
            document=document, user=user, decision=QuarantineDecision.Decision.APPROVED
        )


def document_quarantine_reject(*, document: Document, user) -> QuarantineDecision:
    """Delete a quarantined document; the decision row records what it was."""
    with transaction.atomic():
        decision = _decision_record(
            document=document, user=user, decision=QuarantineDecision.Decision.REJECTED
        )
        document.delete()
    return decision


def _decision_record(*, document: Document, user, decision: str) -> QuarantineDecision:
    return QuarantineDecision.objects.create(
        corpus_id=document.corpus_id,
        external_id=document.external_id,
        decision=decision,
        score=document.screen_score,
        excerpt=document_screen_text(document.title, document.text)[:500],
        content_hash=document.content_hash,
        decided_by=user,
    )
