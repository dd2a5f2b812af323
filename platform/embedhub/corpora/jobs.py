"""The `ingest` job kind: import one stored upload into a corpus."""

from __future__ import annotations

import shutil

from rest_framework import serializers

from embedhub.core.errors import ApplicationError
from embedhub.corpora import parsing, screening, selectors, services
from embedhub.corpora.models import Corpus
from embedhub.jobs.kinds import JobKind, job_kind_register
from embedhub.jobs.params import (
    ParamsSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictIntegerField,
    owned,
)


def _corpus(*, user, pk: int) -> Corpus:
    return selectors.corpus_get(user=user, corpus_id=pk)


class MappingField(serializers.DictField):
    """field -> column name (or a list of columns for "metadata")."""

    def to_internal_value(self, data):
        mapping = super().to_internal_value(data)
        for key, value in mapping.items():
            columns = value if isinstance(value, list) else [value]
            if not columns or not all(isinstance(column, str) for column in columns):
                raise serializers.ValidationError(
                    {key: 'a column name, e.g. {"id": "doc_id", "text": "body"}'}
                )
        return mapping


class IngestParams(ParamsSerializer):
    """The params of an ingest job: a stored upload and how to read it."""

    corpus = owned(_corpus, "corpus", "the corpus to fill")
    path = StrictCharField(
        max_length=500, help_text="a stored upload, uploads/<id>/<name> (POST /corpora/upload/)"
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
        path = services.upload_path(params["path"])
    except ApplicationError as exc:
        raise serializers.ValidationError({"path": exc.message}) from None
    if not path.is_file():
        raise serializers.ValidationError(
            {"path": f"uploaded file {params['path']!r} is not there; upload it again"}
        )
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
    params = job.params
    path = services.upload_path(params["path"])
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
    shutil.rmtree(path.parent, ignore_errors=True)  # kept on failure so a retry can reread it
    return result


INGEST = job_kind_register(
    JobKind(
        name="ingest",
        queue="cpu",
        params=IngestParams,
        prepare=ingest_prepare,
        run=ingest_run,
        description="Import a stored upload (JSONL, CSV, TSV or a BEIR zip) into a corpus, "
        "in one transaction.",
    )
)
