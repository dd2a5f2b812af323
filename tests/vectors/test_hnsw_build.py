"""The HNSW build: parallel workers and maintenance_work_mem planned from the server and the
table, a warning when the graph won't fit, and progress read from
pg_stat_progress_create_index into the job's note while CREATE INDEX runs."""

import logging
import re

import numpy as np
import pytest
from django.db import connection

from embedhub.jobs import services as jobs_services
from embedhub.jobs.runner import job_execute
from embedhub.jobs.services import JobCancelled
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors import hnsw, services, tables
from embedhub.vectors.models import VectorIndex
from tests.vectors.conftest import make_documents

NOTE = re.compile(r"building HNSW index: loading tuples \d+% \([\d,]+/([\d,]+) vectors, (.+)\)")


class RecordingContext:
    """A job context that records every report; `cancel_on_build` makes the first report of
    the HNSW build find the job cancelled."""

    checkpoint: dict = {}

    def __init__(self, *, cancel_on_build: bool = False):
        self.reports: list[tuple[int, dict]] = []
        self.cancel_on_build = cancel_on_build

    def progress(self, done, **kwargs) -> None:
        self.reports.append((done, kwargs))
        if self.cancel_on_build and kwargs.get("note", "").startswith("building HNSW index:"):
            raise JobCancelled()

    def check_cancel(self) -> None:
        pass


@pytest.fixture
def hnsw_settings(settings):
    def change(**values):
        settings.EMBEDHUB = {**settings.EMBEDHUB, **values}

    return change


def _index(user, corpus, model_version, n: int, *, dim: int = 64) -> VectorIndex:
    make_documents(corpus, n)
    return services.index_create(
        owner=user, corpus=corpus, model_version=model_version, encoder=f"fake:{dim}"
    )


def _limits() -> dict[str, int]:
    return tables.server_settings(names=hnsw.WORKER_LIMITS)


@pytest.mark.django_db
def test_plan_sizes_memory_from_the_table_and_bounds_workers_by_the_server(hnsw_settings):
    hnsw_settings(HNSW_BUILD_WORKERS=64, HNSW_BUILD_MEMORY_MB=4096)
    plan = hnsw.hnsw_build_plan(rows=500_000, dimension=64, storage="vector", m=16)
    assert plan.workers == min(64, *_limits().values())
    # ~970 bytes a row for vector(64), m 16, as pgvector 0.8.6 measures it.
    assert 440 <= plan.graph_mb <= 480
    assert plan.memory_mb == plan.needed_mb == int(np.ceil(plan.graph_mb * 1.1)) + 16
    assert plan.fits

    halfvec = hnsw.hnsw_build_plan(rows=500_000, dimension=384, storage="halfvec", m=16)
    full = hnsw.hnsw_build_plan(rows=500_000, dimension=384, storage="vector", m=16)
    assert halfvec.graph_mb < full.graph_mb

    hnsw_settings(HNSW_BUILD_WORKERS=1)
    small = hnsw.hnsw_build_plan(rows=1_000, dimension=64, storage="vector", m=16)
    assert small.workers == 1 and small.memory_mb == hnsw.FLOOR_MB

    hnsw_settings(HNSW_BUILD_MEMORY_MB=100)
    capped = hnsw.hnsw_build_plan(rows=500_000, dimension=64, storage="vector", m=16)
    assert capped.memory_mb == 100 and not capped.fits


@pytest.mark.django_db
def test_graph_estimate_matches_where_pgvector_reports_the_graph_full(user, corpus, model_version):
    index = _index(user, corpus, model_version, 0)
    rng = np.random.default_rng(5)
    n = 1_500
    tables.rows_replace(
        table=index.table_name,
        storage=index.storage,
        doc_ids=list(range(1, n + 1)),
        chunks=[0] * n,
        hashes=["0" * 64] * n,
        vectors=rng.standard_normal((n, 64)).astype(np.float32),
    )
    with tables.server_messages() as messages:
        tables.hnsw_build(
            table=index.table_name,
            storage="vector",
            m=16,
            ef_construction=32,
            workers=0,
            memory_mb=1,
        )
    full = [m for m in messages if hnsw.SPILLED in m]
    assert full, messages
    fitted = int(re.search(r"after (\d+) tuples", full[0])[1])
    per_row = hnsw.hnsw_graph_bytes(rows=1, dimension=64, storage="vector", m=16)
    assert 2**20 / fitted == pytest.approx(per_row, rel=0.1)


@pytest.mark.django_db
def test_a_graph_too_big_for_the_cap_is_warned_before_the_build_and_when_it_spills(
    user, corpus, model_version, hnsw_settings, caplog
):
    hnsw_settings(HNSW_BUILD_MEMORY_MB=1)
    index = _index(user, corpus, model_version, 1_500)
    with caplog.at_level(logging.WARNING, logger="embedhub.vectors.hnsw"):
        result = services.index_build(index=index, ctx=RecordingContext())
    assert result["hnsw"]["spilled"] and not result["hnsw"]["memory_mb"] > 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("more than EMBEDHUB_HNSW_BUILD_MEMORY_MB allows" in w for w in warnings)
    assert any(hnsw.SPILLED in w for w in warnings)
    assert tables.hnsw_exists(table=index.table_name)


@pytest.mark.django_db(transaction=True)
def test_build_launches_the_planned_parallel_workers_or_none_when_set_to_zero(
    user, corpus, model_version, hnsw_settings
):
    make_documents(corpus, 2_000)
    launched = {}
    for workers in (1, 0):
        hnsw_settings(HNSW_BUILD_WORKERS=workers)
        index = services.index_create(
            owner=user, corpus=corpus, model_version=model_version, encoder=f"fake:{16 + workers}"
        )
        # Postgres plans no workers for a table under min_parallel_table_scan_size unless
        # the table asks for them.
        with connection.cursor() as cur:
            cur.execute(f"ALTER TABLE {index.table_name} SET (parallel_workers = 1)")
        result = services.index_build(index=index, ctx=RecordingContext())
        launched[workers] = result["hnsw"]["workers_launched"]
        assert result["hnsw"]["workers"] == workers and result["vectors"] == 2_000
    assert launched == {1: 1, 0: 0}


@pytest.mark.django_db(transaction=True)
def test_build_progress_reaches_the_job_note_without_moving_progress(
    user, corpus, model_version, hnsw_settings, monkeypatch
):
    hnsw_settings(HNSW_PROGRESS_SECONDS=0.01)
    make_documents(corpus, 4_000)
    notes = []
    record = jobs_services.job_progress

    def watched(**kwargs):
        notes.append(kwargs.get("note"))
        record(**kwargs)

    monkeypatch.setattr(jobs_services, "job_progress", watched)
    job, _ = job_submit_checked(
        user=user,
        kind="embed",
        params={"corpus": corpus.pk, "model_version": model_version.pk, "encoder": "fake:64"},
    )
    assert job_execute(job_id=job.pk, worker="test@inline") == "succeeded"
    job.refresh_from_db()
    assert job.progress_done == job.progress_total == 4_000
    found = [m for m in map(NOTE.fullmatch, filter(None, notes)) if m]
    assert found, notes  # the running build reported its tuples
    assert found[-1][1] == "4,000"
    assert job.progress_note == ""  # done: no phase left to show as under way


@pytest.mark.django_db(transaction=True)
def test_build_reports_phase_and_share_done_at_the_documents_done(
    user, corpus, model_version, hnsw_settings
):
    hnsw_settings(HNSW_PROGRESS_SECONDS=0.01)
    index = _index(user, corpus, model_version, 4_000)
    ctx = RecordingContext()
    services.index_build(index=index, ctx=ctx)
    notes = [(done, kw["note"]) for done, kw in ctx.reports if "HNSW index:" in kw.get("note", "")]
    assert notes and {done for done, _ in notes} == {4_000}
    shares = [int(re.search(r"(\d+)%", note)[1]) for _, note in notes if NOTE.fullmatch(note)]
    assert shares and shares == sorted(shares)
    # A build that moves on is work done: an attempt preempted in it is not a stalled one.
    # Its first report has nothing to compare with.
    build = [kw for _, kw in ctx.reports if "HNSW index:" in kw.get("note", "")]
    assert build[0]["advanced"] is False
    for before, after in zip(build, build[1:], strict=False):
        if after["note"] != before["note"]:  # the note shows the phase and the counts
            assert after["advanced"] is True


@pytest.mark.django_db(transaction=True)
def test_a_cancel_found_by_a_build_report_cancels_create_index(
    user, corpus, model_version, hnsw_settings
):
    hnsw_settings(HNSW_PROGRESS_SECONDS=0.01)
    index = _index(user, corpus, model_version, 4_000)
    before = _memory_setting()
    with pytest.raises(JobCancelled):
        services.index_build(index=index, ctx=RecordingContext(cancel_on_build=True))
    assert not tables.hnsw_exists(table=index.table_name)
    index.refresh_from_db()
    assert index.state == VectorIndex.State.BUILDING  # a retry builds it
    assert _memory_setting() == before  # the session is usable, on its own settings again


def _memory_setting() -> str:
    with connection.cursor() as cur:
        cur.execute("SHOW maintenance_work_mem")
        return cur.fetchone()[0]
