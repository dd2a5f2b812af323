"""The API's JSON parser: DRF's, with the nesting of a body bounded."""

from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError

# No request body of this API nests more than a few levels (a job's params, its config);
# the bound keeps every later recursive walk of a body (validation, error paths, saving to
# a JSONField) far from Python's recursion limit.
MAX_JSON_DEPTH = 64


def _deeper_than(data, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels, walked without recursion."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


class JSONParser(parsers.JSONParser):
    """Python's JSON decoder recurses once per level, so 100,000 "[" raise RecursionError,
    which DRF's parser (it maps ValueError only) let through as a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        too_deep = ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise too_deep from None
        if _deeper_than(data, MAX_JSON_DEPTH):
            raise too_deep
        return data
