"""Fine-tuning data: JSONL files of {"query", "positive", "negatives"?} pairs, and the
(query, positive document) pairs an evaluation query set's judgements imply.

Uploaded files are stored once per content hash under the owner's folder, so the same
file uploaded twice is one training set and a job can name it by its hash.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings

from embedhub.core.errors import ApplicationError, NotFound
from embedhub.corpora.parsing import InvalidLine, clean_text, json_object, open_binary, read_lines
from workers.ml.training import TrainPair

MAX_NEGATIVES_PER_LINE = 64


@dataclass(frozen=True)
class TrainingSet:
    sha256: str
    path: str
    pairs: int
    queries: int
    with_negatives: int


def training_dir(*, user) -> Path:
    return Path(settings.MEDIA_ROOT) / "training-sets" / str(user.pk)


def _negatives(value, *, file: str, line: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidLine(
            file=file,
            line=line,
            field="negatives",
            problem=f"must be a list of strings, not {type(value).__name__}",
        )
    if len(value) > MAX_NEGATIVES_PER_LINE:
        raise InvalidLine(
            file=file,
            line=line,
            field="negatives",
            problem=f"has {len(value)} items; at most {MAX_NEGATIVES_PER_LINE}",
        )
    return [
        clean_text(v, file=file, line=line, name=f"negatives[{i}]", required=True)
        for i, v in enumerate(value)
    ]


def pairs_read(*, source: str | Path | IO, file: str) -> list[TrainPair]:
    """Every pair of a JSONL file; the first bad line raises an error naming line and field."""
    stream, opened = open_binary(source)
    pairs: list[TrainPair] = []
    try:
        for line in read_lines(stream):
            try:
                obj = json_object(line, file=file)
                if obj is None:
                    continue
                query = clean_text(
                    obj.get("query"), file=file, line=line.number, name="query", required=True
                )
                positive = clean_text(
                    obj.get("positive"), file=file, line=line.number, name="positive", required=True
                )
                negatives = _negatives(obj.get("negatives"), file=file, line=line.number)
            except InvalidLine as problem:
                raise ApplicationError(
                    f'{problem} (expected one JSON object per line with "query", "positive" '
                    'and optionally "negatives": a list of strings)',
                    details=problem.as_dict(),
                    code="invalid_file",
                ) from None
            pairs.append(TrainPair(query=query, positive=positive, negatives=negatives))
    finally:
        if opened:
            stream.close()
    if not pairs:
        raise ApplicationError(f"{file}: no training pairs found", code="invalid_file")
    return pairs


def _describe(pairs: list[TrainPair], *, sha256: str, path: Path) -> TrainingSet:
    return TrainingSet(
        sha256=sha256,
        path=str(path),
        pairs=len(pairs),
        queries=len({p.query for p in pairs}),
        with_negatives=sum(1 for p in pairs if p.negatives),
    )


def training_set_store(*, user, upload) -> TrainingSet:
    """Validate an uploaded JSONL file, then keep it under its content hash."""
    name = Path(getattr(upload, "name", "") or "upload.jsonl").name
    folder = training_dir(user=user)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    # Streamed to a temporary file first: a big upload is never held in memory.
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".part", delete=False) as tmp:
        for chunk in upload.chunks():
            digest.update(chunk)
            tmp.write(chunk)
    try:
        pairs = pairs_read(source=tmp.name, file=name)
    except BaseException:  # a refused file is not kept, whatever refused it
        os.unlink(tmp.name)
        raise
    final = folder / f"{digest.hexdigest()}.jsonl"
    os.replace(tmp.name, final)
    return _describe(pairs, sha256=digest.hexdigest(), path=final)


def training_set_path(*, user, sha256: str) -> Path:
    """The stored file of one of the user's uploads."""
    if (
        not isinstance(sha256, str)
        or len(sha256) != 64
        or not all(c in "0123456789abcdef" for c in sha256)
    ):
        raise ApplicationError("training_set: expected the sha256 returned by the upload")
    path = training_dir(user=user) / f"{sha256}.jsonl"
    if not path.exists():
        raise NotFound(f"training_set {sha256} not found: upload it to /api/v1/training-sets/")
    return path


def pairs_path_check(*, user, path: str) -> Path:
    """A server-side file: staff may name any readable file, others only their uploads."""
    resolved = Path(str(path)).expanduser().resolve()
    own = training_dir(user=user).resolve()
    if not user.is_staff and own not in resolved.parents:
        raise ApplicationError(
            "pairs_path: only staff may train from server files; upload the file to "
            "/api/v1/training-sets/ and pass its training_set id instead",
            code="permission_denied",
        )
    if not resolved.is_file():
        # The path as given, not as resolved: where the server keeps files is staff's business.
        raise ApplicationError(f"pairs_path: no file at {path}")
    return resolved


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
