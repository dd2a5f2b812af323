"""Deterministic races: run a call in another thread (its own DB connection) and wait until
Postgres reports it blocked on a lock, so a test decides exactly who goes first."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from django.db import connection


class InThread:
    """`fn()` in a thread with its own connection; `join()` gives its result or re-raises."""

    def __init__(self, fn: Callable[[], object]):
        self._result: object = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            self._result = fn()
        except BaseException as exc:  # handed to the test thread by join()
            self._error = exc
        finally:
            connection.close()  # this thread's connection; the test DB is dropped later

    def join(self, timeout: float = 60) -> object:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout}s"
        if self._error is not None:
            raise self._error
        return self._result


def wait_for_lock_waiters(count: int, *, timeout: float = 30) -> None:
    """Until `count` sessions of this test database wait for a lock (a row lock included)."""
    deadline = time.monotonic() + timeout
    waiting = 0
    while time.monotonic() < deadline:
        with connection.cursor() as cur:
            # Within a transaction pg_stat_activity is a snapshot; clear it to see changes.
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            waiting = cur.fetchone()[0]
        if waiting >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{waiting} of {count} sessions waited for a lock after {timeout}s")
