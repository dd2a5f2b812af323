"""Upload size caps: every upload endpoint answers an oversized file with the same 413."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from rest_framework import status

from embedhub.core.errors import ApplicationError

# Multipart boundaries and the other form fields ride on top of the files themselves.
MULTIPART_SLACK = 64 * 1024


class FileTooLarge(ApplicationError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "file_too_large"


@dataclass(frozen=True)
class UploadLimit:
    """A byte cap read from the Django setting `setting` (the environment variable of the
    same name sets it); `advice` tells the caller what to do instead."""

    setting: str
    advice: str

    @property
    def limit(self) -> int:
        return int(getattr(settings, self.setting))

    def error(self, size: int) -> FileTooLarge:
        return FileTooLarge(
            f"the upload is {size} bytes, over the {self.limit}-byte limit ({self.setting}); "
            f"{self.advice}",
            details={"size": size, "limit": self.limit},
        )


def upload_declared_check(*, request, limit: UploadLimit) -> None:
    """Refuse before the body is read (and spooled to disk) when its declared length is
    already over the cap."""
    declared = int(request.META.get("CONTENT_LENGTH") or 0)
    if declared > limit.limit + MULTIPART_SLACK:
        raise limit.error(declared)


def upload_size_check(*, files: Iterable, limit: UploadLimit) -> None:
    """The uploaded files together must fit the cap."""
    size = sum(f.size for f in files)
    if size > limit.limit:
        raise limit.error(size)
