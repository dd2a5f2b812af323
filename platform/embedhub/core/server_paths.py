"""Server file-system paths as users see them in the API and the dashboard.

Staff see every path whole. Everyone else sees a path under a storage root (MEDIA_ROOT,
ARTIFACT_ROOT) relative to that root, and any other server path as its last name: where
the server keeps its files, its virtualenv or its project is none of their business, and
a path is a foothold for probing. Only what is shown changes: the rows keep the real
paths, which workers read from the database.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings

# An absolute path inside free text: a "/" that starts a word, up to a space, a quote,
# a bracket or punctuation that ends a phrase ("no file at /x/y.jsonl: ...").
_PATH = re.compile(r"(?<![\w.~/-])/[^\s'\"`<>|,;:()\[\]{}]+")


def server_paths_visible(user) -> bool:
    return bool(user is not None and getattr(user, "is_staff", False))


def server_paths_hidden(value: Any) -> Any:
    """`value` (a string, or JSON of dicts and lists) with each server path shortened."""
    if isinstance(value, str):
        return _PATH.sub(_shortened, value) if "/" in value else value
    if isinstance(value, dict):
        return {key: server_paths_hidden(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [server_paths_hidden(item) for item in value]
    return value


def server_paths_for(user, value: Any) -> Any:
    return value if server_paths_visible(user) else server_paths_hidden(value)


def server_path_shown(path: str) -> str:
    """One absolute server path: relative to the storage root it is under, else its name."""
    for prefix in _storage_prefixes():
        if path.startswith(prefix):
            return path[len(prefix) :] or "."
    return PurePosixPath(path).name or path


def _shortened(match: re.Match) -> str:
    token = match.group(0)
    path = token.rstrip(".")  # the full stop that ends a sentence
    if not _is_server_path(path):
        return token
    return server_path_shown(path) + token[len(path) :]


def _is_server_path(path: str) -> bool:
    """A path under a root this server uses, or under one of its top-level directories:
    "/api/v1/jobs/" in a hint is a URL and stays."""
    if any(path.startswith(prefix) for prefix in _known_prefixes()):
        return True
    parts = PurePosixPath(path).parts
    return len(parts) > 2 and parts[1] in _top_level_directories()


def _storage_prefixes() -> tuple[str, ...]:
    return _prefixes((str(settings.ARTIFACT_ROOT), str(settings.MEDIA_ROOT)))


def _known_prefixes() -> tuple[str, ...]:
    installs = (str(settings.BASE_DIR), sys.prefix, sys.base_prefix, os.path.expanduser("~"))
    absolute = tuple(root for root in installs if os.path.isabs(root))  # "~": no home known
    return (*_storage_prefixes(), *_prefixes(absolute))


@functools.cache  # keyed by the roots: a test that overrides a setting gets its own
def _prefixes(roots: tuple[str, ...]) -> tuple[str, ...]:
    """Each root as written and resolved (a symlinked root is stored either way), with a
    trailing "/", longest first so that a root inside another wins."""
    found = set()
    for root in roots:
        for form in (Path(root), Path(root).resolve()):
            if str(form) != "/":
                found.add(f"{str(form).rstrip('/')}/")
    return tuple(sorted(found, key=len, reverse=True))


@functools.cache
def _top_level_directories() -> frozenset[str]:
    try:
        return frozenset(name for name in os.listdir("/") if os.path.isdir(f"/{name}"))
    except OSError:
        return frozenset()


class ServerPathsHidden:
    """A mixin for Output serializers: the fields named in `server_path_fields` are
    shown with server_paths_hidden unless the requesting user is staff (the context's
    "user", or its request's). Without either, they are hidden."""

    server_path_fields: tuple[str, ...] = ()

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if server_paths_visible(self._viewer()):
            return data
        for name in self.server_path_fields:
            if name in data:
                data[name] = server_paths_hidden(data[name])
        return data

    def _viewer(self):
        context = getattr(self, "context", None) or {}
        request = context.get("request")
        return context.get("user") or getattr(request, "user", None)
