"""The per-index pgvector tables: DDL, binary COPY of vectors, HNSW build, search SQL.

One table per VectorIndex keeps each index's dimension/type exact (`vector(d)` or
`halfvec(d)`), lets an index be built, swapped and dropped without touching the others,
and makes "drop after retention" a cheap DROP TABLE.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from django.db import connection, transaction

HASH_BYTES = 64  # sha256 hex digest: fixed width, so a COPY row is a fixed-size record
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)


def table_name_for(index_id: int) -> str:
    return f"vec_index_{int(index_id)}"


def _ops(storage: str) -> str:
    return "halfvec_cosine_ops" if storage == "halfvec" else "vector_cosine_ops"


def table_create(*, table: str, dimension: int, storage: str) -> None:
    with connection.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " document_id bigint NOT NULL,"
            " chunk integer NOT NULL DEFAULT 0,"
            " content_hash char(64) NOT NULL,"
            f" embedding {storage}({int(dimension)}) NOT NULL,"
            " PRIMARY KEY (document_id, chunk))"
        )


def table_drop(*, table: str) -> None:
    with connection.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")


def index_table_drop_on_delete(*, instance, **_signal) -> None:
    """post_delete receiver for VectorIndex: drop its table in the deleting transaction."""
    if instance.table_name:
        table_drop(table=instance.table_name)


def _copy_payload(
    doc_ids: np.ndarray, chunks: np.ndarray, hashes: list[str], vectors: np.ndarray, storage: str
) -> bytes:
    """Build a PostgreSQL binary COPY stream with numpy (no per-value Python formatting).

    pgvector's binary format is int16 dim, int16 unused, then big-endian float4
    (halfvec: float2) values.
    """
    n, dim = vectors.shape
    value_type = ">f2" if storage == "halfvec" else ">f4"
    vec_bytes = 4 + dim * np.dtype(value_type).itemsize
    record = np.dtype(
        [
            ("nfields", ">i2"),
            ("l_id", ">i4"),
            ("id", ">i8"),
            ("l_chunk", ">i4"),
            ("chunk", ">i4"),
            ("l_hash", ">i4"),
            ("hash", f"S{HASH_BYTES}"),
            ("l_vec", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vec", value_type, (dim,)),
        ]
    )
    rows = np.empty(n, dtype=record)
    rows["nfields"], rows["l_id"], rows["l_chunk"] = 4, 8, 4
    rows["l_hash"], rows["l_vec"], rows["dim"], rows["unused"] = HASH_BYTES, vec_bytes, dim, 0
    rows["id"], rows["chunk"] = doc_ids, chunks
    rows["hash"] = np.array([h.encode("ascii") for h in hashes], dtype=f"S{HASH_BYTES}")
    rows["vec"] = vectors
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def rows_replace(
    *,
    table: str,
    storage: str,
    doc_ids: list[int],
    chunks: list[int],
    hashes: list[str],
    vectors: np.ndarray,
) -> None:
    """Replace these documents' vectors. Delete-then-COPY keyed by document makes a
    repeated batch (a retried job, a duplicate delivery) leave exactly one copy."""
    unique_ids = sorted(set(doc_ids))
    payload = _copy_payload(
        np.asarray(doc_ids, dtype=np.int64),
        np.asarray(chunks, dtype=np.int32),
        hashes,
        np.asarray(vectors, dtype=np.float32),
        storage,
    )
    with connection.cursor() as cur:
        cur.execute(f"DELETE FROM {table} WHERE document_id = ANY(%s)", [unique_ids])
        raw = cur.cursor  # psycopg3 cursor underneath Django's wrapper
        with raw.copy(
            f"COPY {table} (document_id, chunk, content_hash, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.write(payload)


def hnsw_exists(*, table: str) -> bool:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT 1 FROM pg_indexes WHERE tablename = %s AND indexname = %s",
            [table, f"{table}_hnsw"],
        )
        return cur.fetchone() is not None


def hnsw_build(
    *, table: str, storage: str, m: int, ef_construction: int, workers: int, memory_mb: int
) -> None:
    """Built after the bulk load: one pass over the data beats incremental inserts.

    SET LOCAL confines the build's settings to its own transaction, so the connection is
    back on the server's defaults afterwards, even when the build fails."""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(f"SET LOCAL max_parallel_maintenance_workers = {int(workers)}")
        cur.execute(f"SET LOCAL maintenance_work_mem = '{int(memory_mb)}MB'")
        # DEBUG1 carries pgvector's "using N parallel workers" (see server_messages).
        cur.execute("SET LOCAL client_min_messages = debug1")
        cur.execute(
            f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} "
            f"USING hnsw (embedding {_ops(storage)}) WITH (m = %s, ef_construction = %s)"
            % (int(m), int(ef_construction))
        )


@contextmanager
def server_messages() -> Iterator[list[str]]:
    """The notices (NOTICE, DEBUG, ...) the server sends on this connection meanwhile, as
    "SEVERITY: message" lines; psycopg drops them unless someone listens."""
    connection.ensure_connection()
    raw = connection.connection
    messages: list[str] = []

    def keep(diagnostic) -> None:
        messages.append(f"{diagnostic.severity_nonlocalized}: {diagnostic.message_primary}")

    raw.add_notice_handler(keep)
    try:
        yield messages
    finally:
        raw.remove_notice_handler(keep)


def server_settings(*, names: tuple[str, ...]) -> dict[str, int]:
    """Integer server settings by name (as SHOW gives them, in their base unit)."""
    with connection.cursor() as cur:
        cur.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(names)])
        return {name: int(value) for name, value in cur.fetchall()}


def backend_pid() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def backend_cancel(*, pid: int) -> None:
    """Cancel the statement backend `pid` runs (one of our own role's sessions)."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_cancel_backend(%s)", [pid])


BUILD_PROGRESS = ("phase", "blocks_total", "blocks_done", "tuples_done", "workers")


def index_build_progress(*, pid: int) -> dict | None:
    """The CREATE INDEX backend `pid` runs, as pg_stat_progress_create_index shows it, with
    the parallel workers it leads; None when it runs none."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT p.phase, p.blocks_total, p.blocks_done, p.tuples_done, "
            "(SELECT count(*) FROM pg_stat_activity a WHERE a.leader_pid = p.pid) "
            "FROM pg_stat_progress_create_index p WHERE p.pid = %s",
            [pid],
        )
        row = cur.fetchone()
    return dict(zip(BUILD_PROGRESS, row, strict=True)) if row else None


def orphans_delete(*, table: str, corpus_id: int) -> int:
    """Vectors of documents removed from the corpus."""
    with connection.cursor() as cur:
        cur.execute(
            f"DELETE FROM {table} v WHERE NOT EXISTS (SELECT 1 FROM corpora_document d "
            "WHERE d.id = v.document_id AND d.corpus_id = %s)",
            [corpus_id],
        )
        return cur.rowcount


def vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vector, dtype=np.float32)) + "]"


def rows_count(*, table: str) -> tuple[int, int]:
    """(vectors, distinct documents)."""
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*), count(DISTINCT document_id) FROM {table}")
        return tuple(cur.fetchone())
