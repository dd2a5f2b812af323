"""Writes on corpora: create/delete, store an upload, and the `ingest` job.

The REST API and the dashboard both call `corpus_upload`; the worker runs
the `ingest` job kind (`corpora/jobs.py`). A retried ingest starts over: the import is one transaction, and
re-importing the same file is a no-op thanks to the upsert on (corpus, external id).
"""

from __future__ import annotations

import itertools
import logging
import re
import uuid
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from embedhub.core.errors import ApplicationError, Conflict
from embedhub.corpora import archives, loading, parsing, screening
from embedhub.corpora.models import Corpus
from embedhub.jobs.models import Job
from embedhub.jobs.submission import job_submit_checked

logger = logging.getLogger(__name__)

UPLOAD_DIR = "uploads"


def corpus_create(*, owner, name: str, description: str = "") -> Corpus:
    name = (name or "").strip()
    if not name:
        raise ApplicationError("a corpus needs a name", details={"field": "name"})
    try:
        with transaction.atomic():
            return Corpus.objects.create(owner=owner, name=name, description=description)
    except IntegrityError:
        raise Conflict(
            f"you already have a corpus named {name!r}; pick another name or upload into it",
            details={"field": "name"},
        ) from None


def corpus_get_or_create(*, owner, name: str) -> Corpus:
    corpus = Corpus.objects.filter(owner=owner, name=(name or "").strip()).first()
    return corpus or corpus_create(owner=owner, name=name)


def corpus_delete(*, corpus: Corpus) -> None:
    """Delete the corpus, its documents, jobs, query sets and indexes, in one transaction.

    Each index's vector table is dropped by the vectors app when its row goes (a post_delete
    receiver), inside this transaction, so a failed delete keeps every table.
    """
    with transaction.atomic():
        corpus.delete()


# --- uploads -------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    base = Path(str(name).replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return base[-200:]


def upload_store(*, owner, uploaded_file) -> Path:
    """Stream an UploadedFile to MEDIA_ROOT/uploads/<uuid>/<safe name>, chunk by chunk."""
    folder = Path(settings.MEDIA_ROOT) / UPLOAD_DIR / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=False)
    target = folder / _safe_name(uploaded_file.name)
    with open(target, "wb") as out:
        for chunk in uploaded_file.chunks():
            out.write(chunk)
    logger.info("stored upload %s for user %s (%s bytes)", target, owner.pk, target.stat().st_size)
    return target


def upload_path(relative: str) -> Path:
    """Resolve a stored upload; refuses anything outside MEDIA_ROOT/uploads."""
    root = (Path(settings.MEDIA_ROOT) / UPLOAD_DIR).resolve()
    path = (root / relative).resolve()
    if root not in path.parents:
        raise ApplicationError(
            "params.path must name a file stored by an upload (uploads/<id>/<name>)",
            details={"field": "path"},
        )
    return path


def corpus_upload(
    *,
    owner,
    uploaded_file,
    corpus: Corpus | None = None,
    corpus_name: str | None = None,
    format: str | None = None,  # noqa: A002 - the API's field name
    mapping: dict | None = None,
    skip_invalid: bool = False,
    idempotency_key: str | None = None,
) -> Job:
    """Store the file and submit the ingest job, creating the corpus if it is new."""
    if idempotency_key:
        existing = Job.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing:
            return existing
    fmt = format or parsing.sniff_format(uploaded_file.name)
    if corpus is None:
        if not corpus_name:
            raise ApplicationError("name the corpus to upload into", details={"field": "name"})
        corpus = corpus_get_or_create(owner=owner, name=corpus_name)
    stored = upload_store(owner=owner, uploaded_file=uploaded_file)
    params = {
        "corpus": corpus.pk,
        "path": str(stored.relative_to(Path(settings.MEDIA_ROOT) / UPLOAD_DIR)),
        "filename": Path(str(uploaded_file.name)).name,
        "format": fmt,
        "mapping": mapping or {},
        "skip_invalid": bool(skip_invalid),
        "size": stored.stat().st_size,
    }
    job, _ = job_submit_checked(
        user=owner, kind=Job.Kind.INGEST, params=params, idempotency_key=idempotency_key
    )
    return job


# --- importing ------------------------------------------------------------------


def corpus_ingest_file(
    *,
    corpus_id: int,
    path: Path,
    fmt: str,
    owner_id: int | None = None,
    filename: str | None = None,
    mapping: dict | None = None,
    skip_invalid: bool = False,
    progress=None,
) -> dict:
    """Import one file into a corpus in one transaction; returns the counts and what was skipped."""
    filename = filename or Path(path).name
    if Path(path).stat().st_size == 0:
        raise parsing.file_error(filename, "the file is empty")
    skipped = parsing.Skipped()
    throttled = loading.Throttled(progress)
    screen = screening.ingest_screen_prepare(corpus_id=corpus_id)
    if fmt == "zip":
        if owner_id is None:
            owner_id = Corpus.objects.values_list("owner_id", flat=True).get(pk=corpus_id)
        result = _ingest_zip(
            corpus_id=corpus_id,
            owner_id=owner_id,
            path=path,
            filename=filename,
            skip_invalid=skip_invalid,
            skipped=skipped,
            progress=throttled,
            screen=screen,
        )
    else:
        with open(path, "rb") as stream, loading.import_cursor() as cur:
            records = parsing.records(
                stream,
                fmt=fmt,
                file=filename,
                mapping=mapping,
                on_invalid=_on_invalid(skip_invalid, skipped),
            )
            result = loading.documents_load(
                cur=cur,
                corpus_id=corpus_id,
                records=records,
                file=filename,
                skip_invalid=skip_invalid,
                skipped=skipped,
                progress=throttled,
                screen=screen,
            )
    if screen is not None:
        result["screening"] = screen.result()
    return {"format": fmt, "file": filename, **result, **skipped.as_result()}


def _on_invalid(skip_invalid: bool, skipped: parsing.Skipped):
    def handle(problem: parsing.InvalidLine) -> None:
        if not skip_invalid:
            raise problem.as_error()
        skipped.add(problem)

    return handle


def _ingest_zip(
    *, corpus_id, owner_id, path, filename, skip_invalid, skipped, progress, screen
) -> dict:
    archive = archives.open_beir(path, name=filename)
    with archive.zip, loading.import_cursor() as cur:
        label = archive.label(archive.corpus)
        with archive.zip.open(archive.corpus) as stream:
            records = parsing.jsonl_records(
                stream, file=label, on_invalid=_on_invalid(skip_invalid, skipped)
            )
            result = loading.documents_load(
                cur=cur,
                corpus_id=corpus_id,
                records=records,
                file=label,
                skip_invalid=skip_invalid,
                skipped=skipped,
                progress=progress,
                screen=screen,
            )
        result["query_sets"] = []
        for qrels, importer in itertools.product(archive.qrels, archives.query_set_importers()):
            with archive.zip.open(archive.queries) as queries, archive.zip.open(qrels) as judged:
                imported = importer(
                    owner=owner_id,
                    corpus=corpus_id,
                    name=archives.split_name(qrels),
                    queries_path=queries,
                    qrels_path=judged,
                    skip_invalid=skip_invalid,
                    cursor=cur,
                    queries_label=archive.label(archive.queries),
                    qrels_label=archive.label(qrels),
                )
            skipped.merge(parsing.Skipped(imported.pop("skipped"), imported.pop("skipped_total")))
            result["query_sets"].append(imported)
    return result
