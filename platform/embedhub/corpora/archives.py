"""Opening a BEIR .zip safely: no path traversal, no zip bombs, members streamed."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from django.conf import settings

from embedhub.corpora.parsing import file_error

# Text compresses 3-10x; a member far beyond this is a bomb, not a corpus.
DEFAULT_MAX_RATIO = 100
DEFAULT_MAX_UNCOMPRESSED = 32 * 1024**3
RATIO_CHECK_ABOVE = 1024 * 1024  # tiny members may compress absurdly well and are harmless


def _limits() -> tuple[float, int]:
    ratio = getattr(settings, "EMBEDHUB_ZIP_MAX_RATIO", DEFAULT_MAX_RATIO)
    total = getattr(settings, "EMBEDHUB_ZIP_MAX_UNCOMPRESSED_BYTES", DEFAULT_MAX_UNCOMPRESSED)
    return ratio, total


@dataclass
class BeirArchive:
    zip: zipfile.ZipFile
    name: str
    corpus: zipfile.ZipInfo
    queries: zipfile.ZipInfo | None = None
    qrels: list[zipfile.ZipInfo] = field(default_factory=list)

    def label(self, info: zipfile.ZipInfo) -> str:
        return f"{self.name}:{info.filename}"


def _check_member(info: zipfile.ZipInfo, *, name: str, max_ratio: float) -> None:
    path = PurePosixPath(info.filename.replace("\\", "/"))
    if info.filename.startswith(("/", "\\")) or path.is_absolute() or ":" in path.parts[0]:
        raise file_error(
            name, f"unsafe member {info.filename!r}: absolute path", member=info.filename
        )
    if ".." in path.parts:
        raise file_error(
            name, f"unsafe member {info.filename!r}: path traversal ('..')", member=info.filename
        )
    if info.file_size > RATIO_CHECK_ABOVE:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > max_ratio:
            raise file_error(
                name,
                f"member {info.filename!r} expands {ratio:.0f}x ({info.compress_size} -> "
                f"{info.file_size} bytes), over the {max_ratio:.0f}x limit: refusing a likely zip bomb",
                member=info.filename,
            )


def _strip_top(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """Member paths relative to the single top folder, if everything sits in one."""
    files = [i for i in infos if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
    paths = {i.filename: i for i in files}
    tops = {PurePosixPath(p).parts[0] for p in paths}
    if len(tops) == 1 and all(len(PurePosixPath(p).parts) > 1 for p in paths):
        top = tops.pop()
        return {str(PurePosixPath(p).relative_to(top)): i for p, i in paths.items()}
    return paths


def open_beir(path, *, name: str) -> BeirArchive:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise file_error(name, f"not a readable zip file ({exc})") from None
    try:
        return _inspect(archive, name=name)
    except Exception:
        archive.close()
        raise


def _inspect(archive: zipfile.ZipFile, *, name: str) -> BeirArchive:
    max_ratio, max_total = _limits()
    infos = archive.infolist()
    if not infos:
        raise file_error(name, "the zip is empty")
    total = 0
    for info in infos:
        _check_member(info, name=name, max_ratio=max_ratio)
        total += info.file_size
    if total > max_total:
        raise file_error(
            name,
            f"the zip expands to {total} bytes, over the {max_total}-byte limit",
            uncompressed_bytes=total,
        )
    members = _strip_top(infos)
    corpus = members.get("corpus.jsonl")
    if corpus is None:
        raise file_error(
            name,
            "no corpus.jsonl in the zip (expected the BEIR layout: corpus.jsonl, queries.jsonl, "
            f"qrels/<split>.tsv); it holds {', '.join(sorted(members)[:10]) or 'nothing'}",
        )
    qrels = sorted(
        (
            info
            for rel, info in members.items()
            if rel.startswith("qrels/") and rel.endswith(".tsv") and rel.count("/") == 1
        ),
        key=lambda i: i.filename,
    )
    queries = members.get("queries.jsonl")
    if qrels and queries is None:
        raise file_error(name, "the zip has qrels/ but no queries.jsonl to go with them")
    return BeirArchive(zip=archive, name=name, corpus=corpus, queries=queries, qrels=qrels)


def split_name(info: zipfile.ZipInfo) -> str:
    """qrels/test.tsv -> "test": the query set is named after its qrels file."""
    return PurePosixPath(info.filename).stem


# A BEIR archive's queries and qrels are the evaluation app's business, and evaluation sits
# above corpora: it registers its importer here at start-up (EvaluationConfig.ready), so
# corpora calls it without importing it. Each importer takes the keyword arguments of
# evaluation.importing.query_set_import and returns its report.
_query_set_importers: list[Callable[..., dict]] = []


def query_set_importer_register(importer: Callable[..., dict]) -> None:
    if importer not in _query_set_importers:
        _query_set_importers.append(importer)


def query_set_importers() -> list[Callable[..., dict]]:
    return list(_query_set_importers)
