"""Getting parsed records into Postgres: COPY into a staging table, check, upsert in SQL.

Everything for one upload runs in one transaction, so a bad line, a cancel or a killed
worker leaves the corpus exactly as it was. The transaction runs on a connection of its
own: the job's progress reports and the heartbeat must commit while the import is still
open, and they update the job row, which the import never touches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

from embedhub.core.errors import NotFound
from embedhub.corpora.parsing import (
    InvalidLine,
    Record,
    Skipped,
    all_skipped_error,
    file_error,
)

PROGRESS_EVERY_SECONDS = 1.0


@contextmanager
def import_cursor(cursor=None) -> Iterator:
    """A psycopg cursor inside one transaction that commits on success, rolls back on error."""
    if cursor is not None:
        yield cursor
        return
    if connection.in_atomic_block:
        # The caller already holds a transaction (a test, or a service composing several
        # writes): join it, so its uncommitted rows are visible and it decides the outcome.
        with transaction.atomic():
            connection.ensure_connection()
            with connection.connection.cursor() as cur:
                yield cur
        return
    default = connections[DEFAULT_DB_ALIAS]
    private = type(default)(dict(default.settings_dict), alias=DEFAULT_DB_ALIAS)
    try:
        private.ensure_connection()
        raw = private.connection
        with raw.transaction(), raw.cursor() as cur:
            yield cur
    finally:
        private.close()


class Throttled:
    """Calls `report(offset)` at most once a second: progress reports are DB writes."""

    def __init__(self, report: Callable[[int], None] | None):
        self.report = report
        self._last = 0.0

    def __call__(self, offset: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.report and (force or now - self._last >= PROGRESS_EVERY_SECONDS):
            self._last = now
            self.report(offset)


def _stage(cur, records: Iterable[Record], progress: Throttled) -> int:
    cur.execute("DROP TABLE IF EXISTS ingest_docs")
    cur.execute(
        "CREATE TEMP TABLE ingest_docs (line_no bigint NOT NULL, external_id text NOT NULL, "
        "title text NOT NULL, text text NOT NULL, metadata jsonb NOT NULL, "
        "content_hash text NOT NULL) ON COMMIT DROP"
    )
    staged = 0
    copy_sql = (
        "COPY ingest_docs (line_no, external_id, title, text, metadata, content_hash) FROM STDIN"
    )
    with cur.copy(copy_sql) as copy:
        for record in records:
            copy.write_row(
                (
                    record.line,
                    record.external_id,
                    record.title,
                    record.text,
                    json.dumps(record.metadata, ensure_ascii=False),
                    record.content_hash,
                )
            )
            staged += 1
            progress(record.offset)
    return staged


def _duplicates(cur, *, file: str, skip_invalid: bool, skipped: Skipped) -> int:
    """Duplicate ids in one file: fatal naming both lines, or later copies skipped."""
    cur.execute(
        "SELECT line_no, external_id, first FROM ("
        "  SELECT line_no, external_id, min(line_no) OVER (PARTITION BY external_id) AS first"
        "  FROM ingest_docs) d WHERE line_no > first ORDER BY line_no LIMIT %s",
        [1000],
    )
    rows = cur.fetchall()
    if not rows:
        return 0
    if not skip_invalid:
        line, external_id, first = rows[0]
        raise InvalidLine(
            file=file,
            line=line,
            field="_id/id",
            problem=f"duplicate id {external_id!r}: lines {first} and {line} both use it",
        ).as_error()
    for line, external_id, first in rows:
        skipped.add(
            InvalidLine(
                file=file,
                line=line,
                field="_id/id",
                problem=f"duplicate id {external_id!r} (first on line {first}, which was kept)",
            )
        )
    cur.execute(
        "DELETE FROM ingest_docs s USING ("
        "  SELECT line_no, min(line_no) OVER (PARTITION BY external_id) AS first FROM ingest_docs"
        ") d WHERE s.line_no = d.line_no AND d.line_no > d.first"
    )
    # Rows beyond the listed ones still count toward the total.
    skipped.total += max(cur.rowcount - len(rows), 0)
    return cur.rowcount


def _lock_corpus(cur, corpus_id: int) -> None:
    # Serialises concurrent uploads to one corpus; NO KEY UPDATE still lets jobs reference it.
    cur.execute("SELECT id FROM corpora_corpus WHERE id = %s FOR NO KEY UPDATE", [corpus_id])
    if cur.fetchone() is None:
        raise NotFound(f"corpus {corpus_id} no longer exists (deleted during the upload?)")


def _counts(cur, corpus_id: int) -> dict:
    cur.execute(
        "SELECT count(*) FILTER (WHERE d.id IS NULL),"
        " count(*) FILTER (WHERE d.content_hash <> s.content_hash),"
        " count(*) FILTER (WHERE d.content_hash = s.content_hash AND d.metadata <> s.metadata),"
        " count(*) FILTER (WHERE d.content_hash = s.content_hash AND d.metadata = s.metadata)"
        " FROM ingest_docs s LEFT JOIN corpora_document d"
        "  ON d.corpus_id = %s AND d.external_id = s.external_id",
        [corpus_id],
    )
    inserted, updated, metadata_updated, unchanged = cur.fetchone()
    return {
        "inserted": inserted,
        "updated": updated,
        "metadata_updated": metadata_updated,
        "unchanged": unchanged,
    }


def _upsert(cur, corpus_id: int) -> None:
    # Unchanged rows are left alone (updated_at too): the embed job keys on content_hash.
    cur.execute(
        "INSERT INTO corpora_document"
        " (corpus_id, external_id, title, text, metadata, content_hash, created_at, updated_at)"
        " SELECT %s, external_id, title, text, metadata, content_hash, now(), now()"
        " FROM ingest_docs ORDER BY line_no"
        " ON CONFLICT (corpus_id, external_id) DO UPDATE SET"
        "  title = EXCLUDED.title, text = EXCLUDED.text, metadata = EXCLUDED.metadata,"
        "  content_hash = EXCLUDED.content_hash, updated_at = now()"
        " WHERE corpora_document.content_hash IS DISTINCT FROM EXCLUDED.content_hash"
        "  OR corpora_document.metadata IS DISTINCT FROM EXCLUDED.metadata",
        [corpus_id],
    )


def documents_load(
    *,
    cur,
    corpus_id: int,
    records: Iterable[Record],
    file: str,
    skip_invalid: bool,
    skipped: Skipped,
    progress: Throttled,
    screen=None,
) -> dict:
    """Stage, validate and upsert one file's documents on `cur` (inside the caller's transaction).

    `screen` (corpora.screening.IngestScreen) scores the new and changed staged documents
    before the upsert and quarantines the flagged ones after it, in the same transaction."""
    since = skipped.total
    staged = _stage(cur, records, progress)
    if staged == 0 and skipped.total == since:
        raise file_error(file, "the file holds no documents (it is empty or only blank lines)")
    if staged == 0:  # every line skipped: refused like a query set with nothing usable left
        raise all_skipped_error(file=file, plural="documents", skipped=skipped)
    duplicates = _duplicates(cur, file=file, skip_invalid=skip_invalid, skipped=skipped)
    _lock_corpus(cur, corpus_id)
    counts = _counts(cur, corpus_id)
    if screen is not None:
        screen.stage(cur, corpus_id=corpus_id)
    _upsert(cur, corpus_id)
    if screen is not None:
        screen.apply(cur, corpus_id=corpus_id)
    cur.execute("DROP TABLE ingest_docs")
    return {"documents": staged - duplicates, **counts}
