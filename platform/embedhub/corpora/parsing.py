"""Streaming parsers for uploaded files: one line in memory at a time, with line numbers.

Nothing here touches the database; the ingest and query-set import services feed what
these yield into COPY. Every problem is reported as an `InvalidLine` naming the file,
the line and the field, so a user can open the file and fix it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from embedhub.core.errors import ApplicationError

MAX_EXTERNAL_ID = 512  # Document.external_id / Query.external_id max_length
MAX_SKIPPED_LISTED = 1000
BOM = b"\xef\xbb\xbf"
# Python's json nests as deep as the interpreter's stack allows, which depends on where it
# is called; everything after parsing (json.dumps for COPY, jsonb, every later read of the
# row) must cope too, so a fixed bound far from the recursion limit is what we accept.
MAX_JSON_DEPTH = 100
TOO_DEEP = f"nested deeper than {MAX_JSON_DEPTH} levels"
# \ud800-\udfff: escapes that decode to a lone surrogate when unpaired. A cheap filter:
# only a line that has one is searched for a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins the valid pairs
LONE_SURROGATE = "holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not text"
# Python's csv refuses fields over 128 KiB by default; a JSONL line has no such cap, and a
# document must not be refused as CSV that is accepted as JSONL. (A process-wide setting.)
CSV_FIELD_LIMIT = sys.maxsize


class InvalidLine(Exception):
    """One bad record. Fatal unless the caller asked to skip invalid lines."""

    def __init__(self, *, file: str, line: int, field: str, problem: str):
        super().__init__(f"{file} line {line}: {field}: {problem}")
        self.file, self.line, self.field, self.problem = file, line, field, problem

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field, "problem": self.problem}

    def as_error(self) -> ApplicationError:
        return ApplicationError(
            f"{self} (nothing was imported; fix the line, or upload with skip_invalid "
            "to import the valid lines and skip the rest)",
            details=self.as_dict(),
            code="invalid_file",
        )


def file_error(name: str, problem: str, **details) -> ApplicationError:
    """A problem with the file as a whole (empty, wrong format, unsafe zip)."""
    return ApplicationError(
        f"{name}: {problem}", details={"file": name, **details}, code="invalid_file"
    )


@dataclass
class Skipped:
    """The lines skipped with skip_invalid: an exact list, capped, plus the true total."""

    entries: list[dict] = field(default_factory=list)
    total: int = 0

    def add(self, problem: InvalidLine) -> None:
        self.total += 1
        if len(self.entries) < MAX_SKIPPED_LISTED:
            self.entries.append(problem.as_dict())

    def merge(self, other: Skipped) -> None:
        self.total += other.total
        room = MAX_SKIPPED_LISTED - len(self.entries)
        self.entries.extend(other.entries[: max(room, 0)])

    def as_result(self) -> dict:
        return {"skipped": self.entries, "skipped_total": self.total}


def all_skipped_error(*, file: str, plural: str, skipped: Skipped) -> ApplicationError:
    """Refuse a file whose every line was skipped (with skip_invalid): importing nothing
    would succeed silently, and an upload into a new name would leave an empty corpus."""
    first = next((entry for entry in skipped.entries if entry["file"] == file), None)
    why = ""
    if first:
        why = f" (the first: line {first['line']}: {first['field']}: {first['problem']})"
    return file_error(
        file,
        f"nothing usable is left: all its {plural} were skipped{why}; nothing was imported",
        skipped=skipped.entries,
        skipped_total=skipped.total,
    )


@dataclass(frozen=True)
class Line:
    number: int
    raw: bytes
    offset: int  # bytes consumed so far, for progress


@dataclass(frozen=True)
class Record:
    line: int
    external_id: str
    title: str
    text: str
    metadata: dict
    offset: int

    @property
    def content_hash(self) -> str:
        return content_hash(title=self.title, text=self.text)


def content_hash(*, title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()


def open_binary(source: str | Path | IO) -> tuple[IO[bytes], bool]:
    """(binary stream, whether we opened it and must close it)."""
    if isinstance(source, str | Path):
        return open(source, "rb"), True  # noqa: SIM115 - closed by the caller
    if hasattr(source, "open") and hasattr(source, "chunks"):
        source.open("rb")  # a Django UploadedFile
        source.seek(0)
        return source, False
    return source, False


def read_lines(stream: IO) -> Iterator[Line]:
    """Lines as bytes with 1-based numbers; a text stream is re-encoded as UTF-8."""
    offset = 0
    for number, raw in enumerate(stream, start=1):
        if isinstance(raw, str):
            # surrogatepass: a lone surrogate becomes bytes that `decode` reports as not UTF-8.
            raw = raw.encode("utf-8", "surrogatepass")
        offset += len(raw)
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        yield Line(number=number, raw=raw, offset=offset)


def decode(line: Line, *, file: str) -> str:
    try:
        return line.raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise InvalidLine(
            file=file,
            line=line.number,
            field="encoding",
            problem=f"not valid UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8",
        ) from None


def clean_text(value, *, file: str, line: int, name: str, required: bool) -> str:
    if value is None or value == "":
        if required:
            problem = "is missing" if value is None else "is empty"
            raise InvalidLine(file=file, line=line, field=name, problem=problem)
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool) and name.endswith("id"):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidLine(
            file=file,
            line=line,
            field=name,
            problem=f"must be a string, not {type(value).__name__}",
        )
    if required and not value.strip():
        raise InvalidLine(file=file, line=line, field=name, problem="is blank")
    if "\x00" in value:
        # Postgres text cannot hold NUL; better to say so than to fail inside COPY.
        raise InvalidLine(file=file, line=line, field=name, problem="contains a NUL character")
    if name.endswith("id") and len(value) > MAX_EXTERNAL_ID:
        raise InvalidLine(
            file=file, line=line, field=name, problem=f"is longer than {MAX_EXTERNAL_ID} characters"
        )
    return value


def clean_metadata(value: dict, *, file: str, line: int) -> dict:
    if "\\u0000" in json.dumps(value):
        raise InvalidLine(
            file=file, line=line, field="metadata", problem="contains a NUL character"
        )
    return value


class JsonRefused(ValueError):
    """JSON that cannot be read, or read but not stored; `field` is the top-level key it is
    under, or "json"."""

    def __init__(self, problem: str, *, field: str = "json"):
        super().__init__(problem)
        self.problem, self.field = problem, field


def json_loads(text: str):
    """json.loads, also refusing what it reads but nothing downstream can hold: nesting
    deeper than MAX_JSON_DEPTH, and lone surrogates ("\\ud800" unpaired), which are not
    Unicode, so hashing, COPY and Postgres would fail on them later."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonRefused(f"malformed JSON at column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise JsonRefused(TOO_DEEP) from None
    # Both filters are bounds: a line with fewer brackets cannot be too deep, one without a
    # surrogate escape cannot hold a surrogate. Most lines need no walk at all.
    suspect = text.count("[") + text.count("{") > MAX_JSON_DEPTH
    if suspect or _SURROGATE_ESCAPE.search(text):
        unstorable = _unstorable(value)
        if unstorable is not None:
            field, problem = unstorable
            raise JsonRefused(problem, field=field)
    return value


def _unstorable(value) -> tuple[str, str] | None:
    """(top-level key, or "json", and the problem) for the first part that cannot be stored.

    Iterative: the value may be nested almost as deep as the interpreter allows."""
    stack = [(value, 1, "json")]
    while stack:
        item, depth, field = stack.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return field, LONE_SURROGATE
        elif isinstance(item, list | dict):
            if depth > MAX_JSON_DEPTH:
                return field, TOO_DEEP
            if isinstance(item, list):
                stack.extend((child, depth + 1, field) for child in item)
                continue
            for key, child in item.items():
                stack.append((key, depth + 1, field))
                stack.append((child, depth + 1, key if depth == 1 else field))
    return None


def json_object(line: Line, *, file: str) -> dict | None:
    """The JSON object on a line; None for a blank line."""
    text = decode(line, file=file)
    if not text.strip():
        return None
    try:
        obj = json_loads(text)
    except JsonRefused as exc:
        raise InvalidLine(
            file=file, line=line.number, field=exc.field, problem=exc.problem
        ) from None
    if not isinstance(obj, dict):
        raise InvalidLine(
            file=file,
            line=line.number,
            field="json",
            problem=f"expected one JSON object per line, found a {type(obj).__name__}",
        )
    return obj


def _pick(obj: dict, *keys: str):
    for key in keys:
        if key in obj:
            return key, obj[key]
    return keys[0], None


def jsonl_records(
    stream: IO, *, file: str, on_invalid: Callable[[InvalidLine], None]
) -> Iterator[Record]:
    """BEIR corpus lines {"_id","title","text","metadata"} or generic {"id","text",...}."""
    for line in read_lines(stream):
        try:
            obj = json_object(line, file=file)
            if obj is None:
                continue
            yield _record_from_json(obj, line=line, file=file)
        except InvalidLine as problem:
            on_invalid(problem)


def _record_from_json(obj: dict, *, line: Line, file: str) -> Record:
    id_key, raw_id = _pick(obj, "_id", "id")
    external_id = clean_text(raw_id, file=file, line=line.number, name="_id/id", required=True)
    text = clean_text(obj.get("text"), file=file, line=line.number, name="text", required=True)
    title = clean_text(obj.get("title"), file=file, line=line.number, name="title", required=False)
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidLine(
            file=file, line=line.number, field="metadata", problem="must be an object"
        )
    extra = {k: v for k, v in obj.items() if k not in {id_key, "text", "title", "metadata"}}
    metadata = clean_metadata({**metadata, **extra}, file=file, line=line.number)
    return Record(line.number, external_id, title, text, metadata, line.offset)


@dataclass(frozen=True)
class ColumnMapping:
    id: str
    text: str
    title: str | None
    metadata: dict[str, str]  # metadata key -> column


def resolve_mapping(header: list[str], mapping: dict | None, *, file: str) -> ColumnMapping:
    """Check a mapping against the header. Defaults: id/_id, text, title; other columns -> metadata."""
    mapping = dict(mapping or {})
    columns = set(header)

    def column_for(field_name: str, defaults: tuple[str, ...], required: bool) -> str | None:
        if field_name in mapping:
            column = mapping.pop(field_name)
            if column not in columns:
                raise file_error(
                    file,
                    f"line 1: the mapping names column {column!r} for field {field_name!r}, "
                    f"but the header has only {', '.join(map(repr, header))}",
                    line=1,
                    field=field_name,
                )
            return column
        for default in defaults:
            if default in columns:
                return default
        if required:
            raise file_error(
                file,
                f"line 1: no column for field {field_name!r} (looked for "
                f"{' or '.join(map(repr, defaults))}); the header has {', '.join(map(repr, header))}. "
                f'Pass a mapping such as {{"{field_name}": "<column>"}}',
                line=1,
                field=field_name,
            )
        return None

    id_col = column_for("id", ("id", "_id"), True)
    text_col = column_for("text", ("text",), True)
    title_col = column_for("title", ("title",), False)
    listed = mapping.pop("metadata", None)
    metadata = {str(k): str(v) for k, v in mapping.items()}
    for column in listed or []:
        metadata[str(column)] = str(column)
    for key, column in metadata.items():
        if column not in columns:
            raise file_error(
                file,
                f"line 1: the mapping names column {column!r} for metadata {key!r}, "
                f"but the header has only {', '.join(map(repr, header))}",
                line=1,
                field=key,
            )
    if not metadata and listed is None:
        used = {id_col, text_col, title_col}
        metadata = {c: c for c in header if c not in used}
    return ColumnMapping(id=id_col, text=text_col, title=title_col, metadata=metadata)


class _LineFeeder:
    """Feeds decoded lines to csv.reader and remembers which lines were not UTF-8.

    csv.reader pulls lines itself (a quoted field may span several), so decoding errors
    cannot be raised from here without breaking the reader; they are noted and the
    record that contains them is rejected instead.
    """

    def __init__(self, stream: IO):
        self._lines = read_lines(stream)
        self.number = 0
        self.offset = 0
        self.bad: dict[int, int] = {}  # line -> byte position of the first bad byte

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.number, self.offset = line.number, line.offset
        try:
            return line.raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.bad[line.number] = exc.start + 1
            return line.raw.decode("utf-8", errors="replace")


def delimited_records(
    stream: IO,
    *,
    file: str,
    delimiter: str,
    mapping: dict | None,
    on_invalid: Callable[[InvalidLine], None],
) -> Iterator[Record]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    feeder = _LineFeeder(stream)
    reader = csv.reader(feeder, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise file_error(file, f"line 1: unreadable header: {exc}", line=1) from None
    if feeder.bad:
        raise InvalidLine(
            file=file, line=1, field="encoding", problem="not valid UTF-8; save the file as UTF-8"
        ).as_error()
    header = [h.strip() for h in header]
    _columns_unique(header, file=file)
    columns = resolve_mapping(header, mapping, file=file)
    index = {name: i for i, name in enumerate(header)}
    while True:
        start = feeder.number + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            on_invalid(InvalidLine(file=file, line=start, field="csv", problem=str(exc)))
            continue
        try:
            record = _record_from_row(row, start, feeder, columns, index, header, file)
        except InvalidLine as problem:
            on_invalid(problem)
            continue
        if record is not None:
            yield record


def _columns_unique(header: list[str], *, file: str) -> None:
    """Cells are looked up by column name: a repeated name would silently lose a column."""
    first: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name in first:
            raise file_error(
                file,
                f"line 1: column {name!r} appears twice in the header (columns "
                f"{first[name]} and {position}); give each column its own name",
                line=1,
                field=name,
            )
        first[name] = position


def _record_from_row(row, start, feeder, columns, index, header, file) -> Record | None:
    bad = [n for n in feeder.bad if start <= n <= feeder.number]
    for n in bad:
        feeder.bad.pop(n)
    if bad:
        raise InvalidLine(
            file=file,
            line=bad[0],
            field="encoding",
            problem="not valid UTF-8; save the file as UTF-8",
        )
    if not row or all(not cell.strip() for cell in row):
        return None
    if len(row) != len(header):
        raise InvalidLine(
            file=file,
            line=start,
            field="columns",
            problem=f"expected {len(header)} columns as in the header, found {len(row)}",
        )

    def cell(column: str | None, name: str, required: bool) -> str:
        value = row[index[column]] if column is not None else ""
        return clean_text(value, file=file, line=start, name=name, required=required)

    external_id = cell(columns.id, f"id (column {columns.id!r})", True)
    text = cell(columns.text, "text", True)
    title = cell(columns.title, "title", False)
    metadata = {key: row[index[col]] for key, col in columns.metadata.items()}
    metadata = clean_metadata(metadata, file=file, line=start)
    return Record(start, external_id, title, text, metadata, feeder.offset)


def sniff_format(name: str) -> str:
    lower = name.lower()
    for suffix, fmt in (
        (".jsonl", "jsonl"),
        (".json", "jsonl"),
        (".ndjson", "jsonl"),
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".zip", "zip"),
    ):
        if lower.endswith(suffix):
            return fmt
    raise ApplicationError(
        f"cannot tell the format of {name!r} from its name; name it .jsonl, .csv, .tsv or .zip, "
        "or pass format",
        details={"field": "format"},
    )


FORMATS = ("jsonl", "csv", "tsv", "zip")


def records(
    stream: IO, *, fmt: str, file: str, mapping: dict | None, on_invalid
) -> Iterator[Record]:
    if fmt == "jsonl":
        return jsonl_records(stream, file=file, on_invalid=on_invalid)
    if fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        return delimited_records(
            stream, file=file, delimiter=delimiter, mapping=mapping, on_invalid=on_invalid
        )
    raise ApplicationError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
