"""Values read from a query string by hand (the dashboard's pages)."""

from __future__ import annotations

# The largest Postgres bigint: no row has a larger id, and a larger one cannot be sent.
PG_BIGINT_MAX = 2**63 - 1


def query_id(value: str | None) -> int | None:
    """An id written in ASCII digits, else None. str.isdigit() alone also accepts "²" and
    other Unicode digits, which int() refuses (a 500)."""
    if not value or not (value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if number <= PG_BIGINT_MAX else None
