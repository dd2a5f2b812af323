"""Importing a BEIR query set: queries.jsonl + a qrels TSV, streamed, checked line by line.

Used by the ingest job for BEIR zips (inside the corpus import's transaction) and on its
own for uploads of queries + qrels against an existing corpus. Re-importing a name
replaces that query set's queries and judgements; its past EvalRuns stay attached.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO

from embedhub.core.errors import ApplicationError
from embedhub.corpora.loading import import_cursor
from embedhub.corpora.parsing import (
    InvalidLine,
    Skipped,
    all_skipped_error,
    clean_metadata,
    clean_text,
    decode,
    file_error,
    json_object,
    open_binary,
    read_lines,
)

# Evaluation.Qrel.relevance (and the staging column) is a Postgres integer.
RELEVANCE_MIN, RELEVANCE_MAX = -(2**31), 2**31 - 1
QRELS_HEADER = ("query-id", "corpus-id", "score")


def _label(source, given: str | None) -> str:
    if given:
        return given
    if isinstance(source, str | Path):
        return Path(source).name
    return Path(str(getattr(source, "name", "") or "upload")).name


def _pk(obj) -> int:
    return getattr(obj, "pk", obj)


def _reject(problem: InvalidLine, *, skip_invalid: bool, skipped: Skipped) -> None:
    if not skip_invalid:
        raise problem.as_error()
    skipped.add(problem)


def _stage(
    cur,
    stream: IO,
    *,
    table: str,
    columns: str,
    to_row,
    file: str,
    skip_invalid: bool,
    skipped: Skipped,
) -> int:
    """COPY the valid lines of `stream` into a temporary staging table; returns the row count."""
    cur.execute(f"DROP TABLE IF EXISTS {table}")
    cur.execute(f"CREATE TEMP TABLE {table} ({columns}) ON COMMIT DROP")
    names = ", ".join(column.split()[0] for column in columns.split(","))
    staged = 0
    with cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for line in read_lines(stream):
            try:
                row = to_row(line, file=file)
            except InvalidLine as problem:
                _reject(problem, skip_invalid=skip_invalid, skipped=skipped)
                continue
            if row is not None:
                copy.write_row(row)
                staged += 1
    return staged


def _stage_queries(cur, stream: IO, **opts) -> int:
    columns = (
        "line_no bigint NOT NULL, external_id text NOT NULL, text text NOT NULL,"
        " metadata jsonb NOT NULL"
    )
    return _stage(cur, stream, table="import_queries", columns=columns, to_row=_query_row, **opts)


def _query_row(line, *, file: str) -> tuple | None:
    obj = json_object(line, file=file)
    if obj is None:
        return None
    id_key = "_id" if "_id" in obj else "id"
    external_id = clean_text(
        obj.get(id_key), file=file, line=line.number, name="_id/id", required=True
    )
    text = clean_text(obj.get("text"), file=file, line=line.number, name="text", required=True)
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidLine(
            file=file, line=line.number, field="metadata", problem="must be an object"
        )
    extra = {k: v for k, v in obj.items() if k not in {id_key, "text", "metadata"}}
    metadata = clean_metadata({**metadata, **extra}, file=file, line=line.number)
    return (line.number, external_id, text, json.dumps(metadata, ensure_ascii=False))


def _stage_qrels(cur, stream: IO, **opts) -> int:
    columns = (
        "line_no bigint NOT NULL, query_id text NOT NULL, document_id text NOT NULL,"
        " relevance integer NOT NULL"
    )
    return _stage(cur, stream, table="import_qrels", columns=columns, to_row=_qrel_row, **opts)


def _qrel_row(line, *, file: str) -> tuple | None:
    """BEIR `query-id corpus-id score` (header optional) or TREC `qid iter docid rel`."""
    text = decode(line, file=file)
    if not text.strip():
        return None
    parts = text.split("\t") if "\t" in text else text.split()
    parts = [p.strip() for p in parts]
    if len(parts) == 3:
        query_id, document_id, score = parts
    elif len(parts) == 4:
        query_id, _, document_id, score = parts
    else:
        raise InvalidLine(
            file=file,
            line=line.number,
            field="columns",
            problem=f"expected 3 columns (query-id, corpus-id, score) or 4 (TREC), found {len(parts)}",
        )
    if line.number == 1 and _is_header(query_id, document_id, score):
        return None
    relevance = _relevance(score, file=file, line=line.number)
    query_id = clean_text(query_id, file=file, line=line.number, name="query-id", required=True)
    document_id = clean_text(
        document_id, file=file, line=line.number, name="corpus-id", required=True
    )
    return (line.number, query_id, document_id, relevance)


def _is_header(*names: str) -> bool:
    """Only BEIR's header names make line 1 a header: any other bad line 1 is an error."""
    return tuple(name.lower().replace("_", "-") for name in names) == QRELS_HEADER


def _relevance(score: str, *, file: str, line: int) -> int:
    """The score as an integer that fits the relevance column (1.0 is 1; 0.5, inf, 1e20 fail).

    Fractions are refused rather than truncated: 0.9 must not quietly mean "not relevant"."""
    try:
        value = Decimal(score) if score.isascii() else None
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value != value.to_integral_value():
        raise InvalidLine(
            file=file, line=line, field="score", problem=f"{score!r} is not an integer"
        )
    # Compared as a Decimal: int() of 1e999999 would build a million-digit number first.
    if not RELEVANCE_MIN <= value <= RELEVANCE_MAX:
        raise InvalidLine(
            file=file,
            line=line,
            field="score",
            problem=f"{score!r} is out of range ({RELEVANCE_MIN} to {RELEVANCE_MAX})",
        )
    return int(value)


def _drop_bad(
    cur,
    *,
    select: str,
    params: list,
    table: str,
    describe,
    file: str,
    skip_invalid: bool,
    skipped: Skipped,
) -> list[InvalidLine]:
    """Run a check query returning (line_no, ...) rows; skip them, or return them to report."""
    cur.execute(f"{select} ORDER BY line_no LIMIT 1000", params)
    problems = [InvalidLine(file=file, line=row[0], **describe(row)) for row in cur.fetchall()]
    if not problems or not skip_invalid:
        return problems
    for problem in problems:
        skipped.add(problem)
    cur.execute(
        f"DELETE FROM {table} WHERE line_no IN (SELECT line_no FROM ({select}) bad)", params
    )
    skipped.total += max(cur.rowcount - len(problems), 0)
    return []


def _check(
    cur, *, corpus_id: int, queries_file: str, qrels_file: str, skip_invalid: bool, skipped: Skipped
) -> None:
    common = {"skip_invalid": skip_invalid, "skipped": skipped}
    problems = _drop_bad(
        cur,
        select="SELECT line_no, external_id, first FROM (SELECT line_no, external_id,"
        " min(line_no) OVER (PARTITION BY external_id) AS first FROM import_queries) d"
        " WHERE line_no > first",
        params=[],
        table="import_queries",
        describe=lambda r: {
            "field": "_id/id",
            "problem": f"duplicate query id {r[1]!r} (also on line {r[2]})",
        },
        file=queries_file,
        **common,
    )
    problems += _drop_bad(
        cur,
        select="SELECT line_no, query_id, document_id, first FROM (SELECT line_no, query_id,"
        " document_id, min(line_no) OVER (PARTITION BY query_id, document_id) AS first"
        " FROM import_qrels) d WHERE line_no > first",
        params=[],
        table="import_qrels",
        describe=lambda r: {
            "field": "corpus-id",
            "problem": f"duplicate judgement for query {r[1]!r} and document {r[2]!r} (also on line {r[3]})",
        },
        file=qrels_file,
        **common,
    )
    problems += _drop_bad(
        cur,
        select="SELECT line_no, query_id FROM import_qrels r WHERE NOT EXISTS"
        " (SELECT 1 FROM import_queries q WHERE q.external_id = r.query_id)",
        params=[],
        table="import_qrels",
        describe=lambda r: {
            "field": "query-id",
            "problem": f"query {r[1]!r} is not in {queries_file}",
        },
        file=qrels_file,
        **common,
    )
    problems += _drop_bad(
        cur,
        select="SELECT line_no, document_id FROM import_qrels r WHERE NOT EXISTS"
        " (SELECT 1 FROM corpora_document d WHERE d.corpus_id = %s AND d.external_id = r.document_id)",
        params=[corpus_id],
        table="import_qrels",
        describe=lambda r: {
            "field": "corpus-id",
            "problem": f"document {r[1]!r} is not in the corpus",
        },
        file=qrels_file,
        **common,
    )
    if problems:
        # Report the first problem in reading order: queries file first, then by line.
        raise min(problems, key=lambda p: (p.file != queries_file, p.line)).as_error()


def _write(cur, *, owner_id: int, corpus_id: int, name: str, only_judged: bool) -> dict:
    cur.execute(
        "INSERT INTO evaluation_queryset (owner_id, corpus_id, name, created_at, updated_at)"
        " VALUES (%s, %s, %s, now(), now())"
        " ON CONFLICT (corpus_id, name) DO UPDATE SET updated_at = now() RETURNING id",
        [owner_id, corpus_id, name],
    )
    query_set_id = cur.fetchone()[0]
    cur.execute("DELETE FROM evaluation_qrel WHERE query_set_id = %s", [query_set_id])
    cur.execute("DELETE FROM evaluation_query WHERE query_set_id = %s", [query_set_id])
    judged = (
        " WHERE EXISTS (SELECT 1 FROM import_qrels r WHERE r.query_id = q.external_id)"
        if only_judged
        else ""
    )
    cur.execute(
        "INSERT INTO evaluation_query (query_set_id, external_id, text, metadata)"
        f" SELECT %s, external_id, text, metadata FROM import_queries q{judged} ORDER BY line_no",
        [query_set_id],
    )
    queries = cur.rowcount
    cur.execute(
        "INSERT INTO evaluation_qrel (query_set_id, query_external_id, document_external_id, relevance)"
        " SELECT %s, query_id, document_id, relevance FROM import_qrels ORDER BY line_no",
        [query_set_id],
    )
    return {"query_set_id": query_set_id, "name": name, "queries": queries, "qrels": cur.rowcount}


def _nothing_usable(file: str, plural: str, skipped: Skipped, *, since: int) -> ApplicationError:
    """Refuse a file that left nothing to import: a query set without queries or
    judgements scores nothing, and storing one would replace a usable set of the same name.
    `since`: the skipped count before this file's lines were read (none skipped: empty)."""
    if skipped.total == since:
        return file_error(file, f"the file holds no {plural}")
    return all_skipped_error(file=file, plural=plural, skipped=skipped)


def query_set_import(
    *,
    owner,
    corpus,
    name: str,
    queries_path: str | Path | IO,
    qrels_path: str | Path | IO,
    skip_invalid: bool = False,
    only_judged: bool = True,
    cursor=None,
    queries_label: str | None = None,
    qrels_label: str | None = None,
) -> dict:
    """Create or replace the query set `name` on `corpus` from BEIR queries + qrels.

    `queries_path`/`qrels_path` are paths or binary file objects (an UploadedFile, a zip
    member). Every qrel must name a query in the queries file and a document in the corpus.
    With only_judged, queries without any judgement are left out (they cannot be scored).
    Returns {"query_set_id", "name", "queries", "qrels", "skipped", "skipped_total"}.
    """
    name = (name or "").strip()
    if not name:
        raise ApplicationError("a query set needs a name", details={"field": "name"})
    queries_file, qrels_file = _label(queries_path, queries_label), _label(qrels_path, qrels_label)
    skipped = Skipped()
    queries_stream, close_queries = open_binary(queries_path)
    qrels_stream, close_qrels = open_binary(qrels_path)
    try:
        with import_cursor(cursor) as cur:
            opts = {"skip_invalid": skip_invalid, "skipped": skipped}
            if not _stage_queries(cur, queries_stream, file=queries_file, **opts):
                raise _nothing_usable(queries_file, "queries", skipped, since=0)
            since = skipped.total
            if not _stage_qrels(cur, qrels_stream, file=qrels_file, **opts):
                raise _nothing_usable(qrels_file, "judgements", skipped, since=since)
            _check(
                cur, corpus_id=_pk(corpus), queries_file=queries_file, qrels_file=qrels_file, **opts
            )
            # Every judgement left names a staged query, so one left means both files count.
            cur.execute("SELECT EXISTS (SELECT 1 FROM import_qrels)")
            if not cur.fetchone()[0]:
                raise _nothing_usable(qrels_file, "judgements", skipped, since=since)
            result = _write(
                cur, owner_id=_pk(owner), corpus_id=_pk(corpus), name=name, only_judged=only_judged
            )
            cur.execute("DROP TABLE import_queries")
            cur.execute("DROP TABLE import_qrels")
    finally:
        if close_queries:
            queries_stream.close()
        if close_qrels:
            qrels_stream.close()
    return {**result, **skipped.as_result()}
