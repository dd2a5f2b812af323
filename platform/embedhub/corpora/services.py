"""Writes on corpora: create/delete, store an upload, and the `ingest` job.

The REST API and the dashboard both call `corpus_upload`; the worker runs
the `ingest` job kind (`corpora/jobs.py`). A retried ingest starts over: the import is one transaction, and
re-importing the same file is a no-op thanks to the upsert on (corpus, external id).
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from embedhub.core.errors import ApplicationError, Conflict, NotFound, validation_details
from embedhub.corpora import archives, loading, parsing, screening
from embedhub.corpora.models import Corpus
from embedhub.jobs.idempotency import (
    idempotency_key_check,
    job_for_idempotency_key,
    request_fingerprint,
)
from embedhub.jobs.models import Job
from embedhub.jobs.selectors import job_active_touching
from embedhub.jobs.services import job_event_add
from embedhub.jobs.submission import job_submit_checked

logger = logging.getLogger(__name__)

UPLOAD_DIR = "uploads"
# The event an upload's ingest job gets when the upload created its corpus.
CORPUS_CREATED_EVENT = "corpus_created"


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


def corpus_get_or_create(*, owner, name: str) -> tuple[Corpus, bool]:
    """(corpus, created). In the caller's transaction, an existing corpus stays locked until
    it ends: a failed ingest that removes the corpus its upload created
    (corpus_remove_after_failed_ingest) waits, and sees the caller's job, or goes first."""
    existing = (
        Corpus.objects.select_for_update(no_key=True)
        .filter(owner=owner, name=(name or "").strip())
        .first()
    )
    if existing is not None:
        return existing, False
    return corpus_create(owner=owner, name=name), True


def corpus_delete(*, corpus: Corpus) -> None:
    """Delete the corpus, its documents, jobs, query sets and indexes, in one transaction.

    Each index's vector table is dropped by the vectors app when its row goes (a post_delete
    receiver), inside this transaction, so a failed delete keeps every table. Refused (409)
    while a job of the corpus is queued or running: its worker would lose its job's row and
    tables mid-batch, and the owner the record of what it did.
    """
    with transaction.atomic():
        # Every kind, and jobs that name the corpus only in their params (a policy job
        # over several corpora has none of its own).
        touching = job_active_touching(corpus_id=corpus.pk, kinds=Job.Kind.values)
        active = list(touching.select_for_update().values_list("pk", flat=True))
        if active:
            raise Conflict(
                f"corpus {corpus.pk} has jobs queued or running ({', '.join(map(str, active))});"
                " cancel them, or wait for them to end, then delete it",
                code="corpus_busy",
                details={"jobs": active},
            )
        corpus.delete()


# --- uploads -------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    base = Path(str(name).replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return base[-200:]


def upload_folder(*, owner_id: int) -> Path:
    """MEDIA_ROOT/uploads/<owner id>: an ingest job reads only its own owner's uploads there,
    so a path seen in someone else's job params leads nowhere."""
    return Path(settings.MEDIA_ROOT) / UPLOAD_DIR / str(owner_id)


def upload_store(*, owner, uploaded_file) -> Path:
    """Stream an UploadedFile to uploads/<owner id>/<uuid>/<safe name>, chunk by chunk."""
    folder = upload_folder(owner_id=owner.pk) / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=False)
    target = folder / _safe_name(uploaded_file.name)
    with open(target, "wb") as out:
        for chunk in uploaded_file.chunks():
            out.write(chunk)
    logger.info("stored upload %s for user %s (%s bytes)", target, owner.pk, target.stat().st_size)
    return target


def upload_path(*, owner_id: int, relative: str) -> Path:
    """One of the owner's stored uploads: `relative` is <uuid>/<name>, as the upload's ingest
    job params give it. Outside the owner's folder: 400; not there (imported and removed,
    or another account's): 404, which also answers a retry whose file is gone."""
    root = upload_folder(owner_id=owner_id).resolve()
    try:
        path = (root / relative).resolve()
    except (OSError, ValueError):  # a NUL byte, a surrogate, a name too long for the OS
        path = None
    if path is None or root not in path.parents:
        raise ApplicationError(
            "must name a file stored by one of your uploads (<id>/<name>, as in the params "
            "of the ingest job that the upload started)",
            details={"field": "path"},
        )
    try:
        stored = path.is_file()
    except OSError:  # a name longer than the file system allows: never one of its uploads
        stored = False
    if not stored:
        raise NotFound(
            f"no upload {relative!r} of yours is stored (an imported upload is removed); "
            "upload the file again",
            details={"field": "path"},
        )
    return path


def upload_discard(*, owner_id: int, path: Path) -> None:
    """Remove an imported upload: its own folder, never the owner's folder above it."""
    root, path = upload_folder(owner_id=owner_id).resolve(), path.resolve()
    if path.parent.parent == root:
        shutil.rmtree(path.parent, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
    """Store the file and submit the ingest job, creating the corpus if it is new.

    One transaction: a refused request (bad params, a name taken meanwhile, anything) leaves
    no corpus, no job and no stored file behind."""
    fmt = format or parsing.sniff_format(uploaded_file.name)
    key = idempotency_key_check(idempotency_key)
    # What the upload asked for (the file by name and size: hashing its bytes would mean
    # reading a large upload twice), so the key's retry matches and another request doesn't.
    fingerprint = request_fingerprint(
        {
            "upload": [corpus.pk if corpus else None, corpus_name, uploaded_file.name],
            "size": uploaded_file.size,
            "params": [fmt, mapping or {}, bool(skip_invalid)],
        }
    )
    if key and (
        job := job_for_idempotency_key(owner=owner, idempotency_key=key, fingerprint=fingerprint)
    ):
        return job
    if corpus is None and not corpus_name:
        raise ApplicationError("name the corpus to upload into", details={"field": "name"})
    _corpus_named_once_check(corpus=corpus, corpus_name=corpus_name)
    return _upload_submit(
        owner=owner,
        uploaded_file=uploaded_file,
        corpus=corpus,
        corpus_name=corpus_name,
        params={"format": fmt, "mapping": mapping or {}, "skip_invalid": bool(skip_invalid)},
        idempotency_key=key,
        fingerprint=fingerprint,
    )


def _corpus_named_once_check(*, corpus: Corpus | None, corpus_name: str | None) -> None:
    """A name beside a corpus id would be ignored, and the file land somewhere other than
    one of the two places asked for: refused unless it is that corpus's own name."""
    if corpus is None or not corpus_name or corpus_name.strip() == corpus.name:
        return
    message = (
        f"give corpus or name, not both: corpus {corpus.pk} is named {corpus.name!r}, "
        f"not {corpus_name.strip()!r}"
    )
    raise ApplicationError(f"name: {message}", details=validation_details({"name": [message]}))


def _upload_submit(
    *, owner, uploaded_file, corpus, corpus_name, params: dict, idempotency_key, fingerprint
) -> Job:
    stored = upload_store(owner=owner, uploaded_file=uploaded_file)
    job, created = None, False
    try:
        with transaction.atomic():
            corpus_created = False
            if corpus is None:
                corpus, corpus_created = corpus_get_or_create(owner=owner, name=corpus_name)
            job, created = job_submit_checked(
                user=owner,
                kind=Job.Kind.INGEST,
                params={
                    "corpus": corpus.pk,
                    "path": str(stored.relative_to(upload_folder(owner_id=owner.pk))),
                    "filename": Path(str(uploaded_file.name)).name,
                    **params,
                    "size": stored.stat().st_size,
                },
                idempotency_key=idempotency_key,
                fingerprint=fingerprint,
            )
            if not created:  # a concurrent upload with this key won: this one's corpus goes
                transaction.set_rollback(True)
            elif corpus_created:  # what a failed ingest goes by to remove the corpus again
                job_event_add(
                    job=job,
                    kind=CORPUS_CREATED_EVENT,
                    message=f"created corpus {corpus.name!r} for this upload",
                    data={"corpus": corpus.pk, "name": corpus.name},
                )
    except BaseException:
        # The file goes with a refused request (a failed commit too), never from under a
        # job that did commit: its dispatch runs after the commit and can still raise.
        if job is None or not Job.objects.filter(pk=job.pk).exists():
            upload_discard(owner_id=owner.pk, path=stored)
        raise
    if not created:
        upload_discard(owner_id=owner.pk, path=stored)
    return job


def corpus_remove_after_failed_ingest(*, job: Job) -> str | None:
    """After an upload's ingest job failed: remove the corpus that the upload created, so
    a failed upload into a new name leaves no empty corpus behind. The job keeps its record,
    detached from the corpus. Returns what the job's error should add, or None.

    Kept while anything else uses the corpus (another upload's job, its documents, an
    index): that state depends on it, and the note says it still exists. Only while this
    attempt still holds the job: a worker that lost its claim must not pull the corpus from
    under the one that took over."""
    if not job.corpus_id or not job.events.filter(kind=CORPUS_CREATED_EVENT).exists():
        return None
    with transaction.atomic():
        held = Job.objects.select_for_update().filter(
            pk=job.pk, status=Job.Status.RUNNING, claim_token=job.claim_token
        )
        corpus = Corpus.objects.select_for_update().filter(pk=job.corpus_id).first()
        if not held.exists() or corpus is None:
            return None
        if _corpus_in_use(corpus=corpus, job_id=job.pk):
            emptiness = "" if corpus.documents.exists() else ", empty"
            return (
                f"the corpus {corpus.name!r} that this upload created still exists{emptiness} "
                f"(id {corpus.pk}), as other jobs or data use it"
            )
        held.update(corpus=None)  # the job's row and its failure outlive the corpus
        corpus.delete()
    job.corpus_id = None
    _upload_discard_quietly(job=job)  # no retry can use it now: its corpus is gone
    return (
        f"the corpus {corpus.name!r} that this upload created was removed, as it was left "
        "empty; upload the file again"
    )


def _upload_discard_quietly(*, job: Job) -> None:
    try:
        path = upload_path(owner_id=job.owner_id, relative=job.params["path"])
    except ApplicationError:  # gone already
        return
    upload_discard(owner_id=job.owner_id, path=path)


def _corpus_in_use(*, corpus: Corpus, job_id: int) -> bool:
    """Whether any row but this job points at the corpus: every relation, so that one
    added later is never deleted along with the corpus unnoticed."""
    for relation in Corpus._meta.related_objects:
        rows = relation.related_model._base_manager.filter(**{relation.field.name: corpus})
        if relation.related_model is Job:
            rows = rows.exclude(pk=job_id)
        if rows.exists():
            return True
    return False


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
