"""Building an index's HNSW graph after the bulk load: in parallel, with maintenance_work_mem
sized from the table, and watched from a second connection.

pgvector builds the graph in memory while it fits in maintenance_work_mem and then falls
back to inserting on disk, many times slower; a parallel build allocates all of it in shared
memory up front. So the memory is sized from the table (not one fixed size for every index),
and a build that will not fit is logged before it starts and when pgvector says so.

During CREATE INDEX the building session is busy, so a thread with its own connection reads
pg_stat_progress_create_index and writes the phase and share of tuples done into the job's
progress note. Its reports are cancel points like any other: a cancel (or a lost claim)
cancels the CREATE INDEX statement.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import asdict, dataclass

from django.conf import settings
from django.db import connection

from embedhub.jobs.services import JobCancelled, JobLost
from embedhub.vectors import tables
from embedhub.vectors.models import VectorIndex

logger = logging.getLogger(__name__)

MB = 2**20
# pgvector 0.8's in-memory graph per row, besides its neighbour lists and its vector: the
# element (heap tids, lock, pointers), its array of levels and allocator padding. Fitted to
# the tuple count at which pgvector 0.8.6 reported the graph full, for vector(64),
# vector(384), halfvec(384) at m 16 and vector(64) at m 32: within 1 % of each.
ELEMENT_BYTES = 168
CANDIDATE_BYTES = 16  # one neighbour: a pointer, its distance, a flag
HEADROOM = 1.1
# A parallel build keeps 3 MB of its area for other objects and 1 MB as a margin.
FIXED_MB = 16
# Postgres plans fewer parallel participants than asked unless each has 32 MB.
PARTICIPANT_MB = 32
FLOOR_MB = 64  # Postgres's own default maintenance_work_mem
WORKER_LIMITS = ("max_parallel_workers", "max_worker_processes")
LAUNCHED = re.compile(r"using (\d+) parallel workers")
SPILLED = "hnsw graph no longer fits into maintenance_work_mem"
BUILD_COUNTS = ("tuples_done", "blocks_done", "blocks_total")


@dataclass(frozen=True)
class BuildPlan:
    workers: int  # parallel maintenance workers asked for, beside the leader
    memory_mb: int  # maintenance_work_mem of the build
    graph_mb: int  # the estimated in-memory graph

    @property
    def needed_mb(self) -> int:
        return needed_mb(self.graph_mb)

    @property
    def fits(self) -> bool:
        return self.needed_mb <= self.memory_mb


def needed_mb(graph_mb: int) -> int:
    """maintenance_work_mem that holds a graph of `graph_mb` without spilling."""
    return math.ceil(graph_mb * HEADROOM) + FIXED_MB


def hnsw_graph_bytes(*, rows: int, dimension: int, storage: str, m: int) -> int:
    """pgvector's in-memory graph for `rows` vectors: each row has 2m neighbours on level 0
    and m on each upper level, of which it has 1/(m - 1) on average."""
    value = 8 + dimension * (2 if storage == VectorIndex.Storage.HALFVEC else 4)
    level0 = 8 + 2 * m * CANDIDATE_BYTES
    upper = (8 + m * CANDIDATE_BYTES) / max(m - 1, 1)
    return math.ceil(rows * (ELEMENT_BYTES + level0 + upper + value))


def hnsw_build_plan(*, rows: int, dimension: int, storage: str, m: int) -> BuildPlan:
    """Workers as configured, within what the server allows; memory for the whole graph,
    within the configured cap."""
    limits = tables.server_settings(names=WORKER_LIMITS)
    workers = max(0, min(settings.EMBEDHUB["HNSW_BUILD_WORKERS"], *limits.values()))
    graph = hnsw_graph_bytes(rows=rows, dimension=dimension, storage=storage, m=m)
    graph_mb = math.ceil(graph / MB)
    floor = max(FLOOR_MB, PARTICIPANT_MB * (workers + 1))
    memory = min(max(needed_mb(graph_mb), floor), settings.EMBEDHUB["HNSW_BUILD_MEMORY_MB"])
    return BuildPlan(workers=workers, memory_mb=memory, graph_mb=graph_mb)


def hnsw_index_build(*, index: VectorIndex, rows: int, ctx, done: int) -> dict:
    """Build the index's HNSW graph over its `rows` vectors; the build's progress goes into
    the job's note while progress_done stays at `done`. Returns what the build used."""
    plan = hnsw_build_plan(
        rows=rows, dimension=index.dimension, storage=index.storage, m=index.hnsw_m
    )
    if not plan.fits:
        logger.warning(
            "index %s: its HNSW graph needs about %d MB of maintenance_work_mem, more than "
            "EMBEDHUB_HNSW_BUILD_MEMORY_MB allows (%d MB); the build will spill to disk and "
            "take much longer",
            index.pk,
            plan.needed_mb,
            plan.memory_mb,
        )
    watch = BuildWatch(ctx=ctx, pid=tables.backend_pid(), rows=rows, done=done)
    with tables.server_messages() as messages, watch:
        tables.hnsw_build(
            table=index.table_name,
            storage=index.storage,
            m=index.hnsw_m,
            ef_construction=index.hnsw_ef_construction,
            workers=plan.workers,
            memory_mb=plan.memory_mb,
        )
    return {**asdict(plan), **_outcome(index=index, messages=messages)}


def _outcome(*, index: VectorIndex, messages: list[str]) -> dict:
    launched, spilled = 0, False
    for message in messages:
        if found := LAUNCHED.search(message):
            launched = int(found[1])
        if SPILLED in message:
            spilled = True
            logger.warning("index %s: %s", index.pk, message)
    return {"workers_launched": launched, "spilled": spilled}


def build_note(progress: dict, *, rows: int) -> str:
    """e.g. "building HNSW index: loading tuples 42% (42,000/100,000 vectors, 1 parallel
    worker)". A parallel build counts tuples as its leader sees them."""
    phase = progress["phase"].removeprefix("building index: ")
    tuples, blocks, of_blocks = (progress[k] or 0 for k in BUILD_COUNTS)
    share, parts = "", []
    if tuples:
        share = f" {min(100, 100 * tuples // max(rows, 1))}%"
        parts.append(f"{tuples:,}/{rows:,} vectors")
    elif of_blocks:
        share = f" {100 * blocks // of_blocks}%"
        parts.append(f"{blocks:,}/{of_blocks:,} blocks read")
    workers = progress["workers"] or 0
    parts.append(f"{workers} parallel worker{'s' * (workers != 1)}" if workers else "serial")
    return f"building HNSW index: {phase}{share} ({', '.join(parts)})"


class BuildWatch:
    """While the block runs, reports the CREATE INDEX of backend `pid` every
    EMBEDHUB["HNSW_PROGRESS_SECONDS"] from a thread with its own connection.

    A report that finds the job cancelled (or taken over) cancels the statement, and the
    block then raises that exception. A lock orders the two ends, so a cancel is never sent
    once the block has finished and its session moved on to other statements."""

    def __init__(self, *, ctx, pid: int, rows: int, done: int):
        self.ctx, self.pid, self.rows, self.done = ctx, pid, rows, done
        self._seen: tuple | None = None  # the build's (phase, counts) at the last report
        self.stopped_by: Exception | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"hnsw-{pid}", daemon=True)

    def __enter__(self) -> BuildWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._stop.set()
        self._thread.join(timeout=30)
        if self.stopped_by is not None:
            raise self.stopped_by

    def _run(self) -> None:
        interval = settings.EMBEDHUB["HNSW_PROGRESS_SECONDS"]
        try:
            while not self._stop.wait(interval):
                self._report()
        finally:
            connection.close()  # this thread's own connection

    def _report(self) -> None:
        try:
            progress = tables.index_build_progress(pid=self.pid)
            if progress is not None:
                # A build that moved on is work done, though no document count rises: an
                # attempt preempted in it is not a stalled one (the crash policy's count).
                seen = (progress["phase"], *(progress[k] or 0 for k in BUILD_COUNTS))
                advanced = self._seen is not None and seen != self._seen
                self._seen = seen
                note = build_note(progress, rows=self.rows)
                self.ctx.progress(self.done, note=note, advanced=advanced)
        except (JobCancelled, JobLost) as exc:
            with self._lock:
                if not self._stop.is_set():
                    self.stopped_by = exc
                    tables.backend_cancel(pid=self.pid)
                    self._stop.set()
        except Exception:  # a DB blip must not stop the build; the next report retries
            logger.exception("reading the progress of backend %s's index build failed", self.pid)
