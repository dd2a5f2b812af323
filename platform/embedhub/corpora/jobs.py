"""The `ingest` job kind: import one stored upload into a corpus."""

from __future__ import annotations

import logging

from rest_framework import serializers

from embedhub.core.errors import ApplicationError, Conflict
from embedhub.core.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictIntegerField,
)
from embedhub.corpora import parsing, screening, selectors, services
from embedhub.corpora.models import Corpus
from embedhub.jobs.kinds import JobKind, job_kind_register
from embedhub.jobs.params import (
    NOT_FOUND,
    ParamsSerializer,
    owned,
)

logger = logging.getLogger(__name__)


def _corpus(*, user, pk: int) -> Corpus:
    return selectors.corpus_get(user=user, corpus_id=pk)


class MappingField(serializers.DictField):
    """field -> column name; "metadata" alone takes a list of columns (parsing.resolve_mapping)."""

    LISTED = "metadata"
    HELP = {
        True: 'must be a list of column names, e.g. {"metadata": ["lang", "year"]}',
        False: 'must be one column name, e.g. {"id": "doc_id", "text": "body"}',
    }

    def to_internal_value(self, data):
        mapping = super().to_internal_value(data)
        for key, value in mapping.items():
            problem = self._problem(key, value)
            if problem:
                raise serializers.ValidationError({key: problem})
        return mapping

    def _problem(self, key: str, value) -> str | None:
        listed = key == self.LISTED
        columns = value if listed else [value]
        named = isinstance(columns, list) and all(isinstance(c, str) for c in columns)
        if not named or not columns:
            return self.HELP[listed]
        if any("\x00" in name for name in (key, *columns)):
            return "must not contain a NUL character"  # Postgres (the job's params) cannot hold one
        return None


class IngestParams(ParamsSerializer):
    """The params of an ingest job: a stored upload and how to read it."""

    corpus = owned(_corpus, "corpus", "the corpus to fill")
    path = StrictCharField(
        max_length=500, help_text="one of your stored uploads, <id>/<name> (POST /corpora/upload/)"
    )
    filename = StrictCharField(
        required=False, max_length=255, help_text="the name shown in errors; the file's own"
    )
    format = StrictChoiceField(
        choices=parsing.FORMATS, required=False, help_text="default: from the file's name"
    )
    mapping = MappingField(
        required=False, default=dict, help_text="CSV/TSV columns: field -> column"
    )
    skip_invalid = StrictBooleanField(
        default=False, help_text="skip bad lines and list them, instead of rejecting the file"
    )
    size = StrictIntegerField(required=False, min_value=0, help_text="bytes (informational)")


def ingest_prepare(*, user, params: dict) -> tuple[dict, Corpus]:
    try:
        path = services.upload_path(owner_id=user.pk, relative=params["path"])
    except ApplicationError as exc:
        # Another account's upload is not in this user's folder: a 404 like a missing one.
        code = NOT_FOUND if exc.status_code == 404 else None
        raise serializers.ValidationError({"path": exc.message}, code=code) from None
    fmt = params.get("format")
    if not fmt:
        try:
            fmt = parsing.sniff_format(path.name)
        except ApplicationError as exc:
            raise serializers.ValidationError({"format": exc.message}) from None
    corpus = params["corpus"]
    prepared = {
        "corpus": corpus.pk,
        "path": params["path"],
        "filename": params.get("filename") or path.name,
        "format": fmt,
        "mapping": params["mapping"],
        "skip_invalid": params["skip_invalid"],
        "size": params.get("size", path.stat().st_size),
    }
    return prepared, corpus


def ingest_run(*, job, ctx) -> dict:
    _corpus_present_check(job=job)
    try:
        return _ingest(job=job, ctx=ctx)
    except ApplicationError as exc:
        # Only a refusal of the file: the user must change it and upload again anyway. Any
        # other failure (a database blip, a full disk) keeps corpus and upload for a retry.
        try:
            note = services.corpus_remove_after_failed_ingest(job=job)
        except Exception:  # best effort: the job's own failure is what it must report
            logger.exception("job %s: removing the corpus its upload created failed", job.pk)
            note = None
        if note is not None:
            exc.add_note(note)  # the runner adds it to the job's error
        raise


def ingest_before_retry(*, job) -> None:
    _corpus_present_check(job=job)


def _corpus_present_check(*, job) -> None:
    if job.corpus_id is None or not Corpus.objects.filter(pk=job.corpus_id).exists():
        raise Conflict(
            f"the corpus of job {job.pk} was removed (an upload that created it and failed "
            "removes it again); upload the file again",
            code="corpus_removed",
        )


def _ingest(*, job, ctx) -> dict:
    params = job.params
    path = services.upload_path(owner_id=job.owner_id, relative=params["path"])
    total = path.stat().st_size

    def report(done: int) -> None:
        ctx.progress(done, total=total, unit="bytes", note=f"reading {params['filename']}")

    report(0)
    result = services.corpus_ingest_file(
        corpus_id=params["corpus"],
        owner_id=job.owner_id,
        path=path,
        filename=params["filename"],
        fmt=params["format"],
        mapping=params.get("mapping") or None,
        skip_invalid=params.get("skip_invalid", False),
        progress=report,
    )
    ctx.progress(total, total=total, unit="bytes", note="imported")
    refit = screening.corpus_screen_refresh(corpus_id=params["corpus"])
    if refit is not None:
        result.setdefault("screening", {"enabled": True})["screen"] = refit
    # Kept on failure so that a retry can reread it.
    services.upload_discard(owner_id=job.owner_id, path=path)
    return result


INGEST = job_kind_register(
    JobKind(
        name="ingest",
        queue="cpu",
        params=IngestParams,
        prepare=ingest_prepare,
        run=ingest_run,
        before_retry=ingest_before_retry,
        description="Import a stored upload (JSONL, CSV, TSV or a BEIR zip) into a corpus, "
        "in one transaction.",
    )
)
