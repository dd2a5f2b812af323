"""One JSON error shape for the whole API: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager

from django.conf import settings
from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ApplicationError(Exception):
    """A service refused a request for a reason the caller can fix (HTTP 400 by default)."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid"

    def __init__(
        self, message: str, *, details: dict | list | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code:
            self.code = code


class NotFound(ApplicationError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Conflict(ApplicationError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


def error_fields(detail, *, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested errors as {"params.config.lr": [messages]}: each under its full path."""
    if isinstance(detail, Mapping):
        flat: dict[str, list] = {}
        for key, value in detail.items():
            if key == "non_field_errors":
                path = prefix or "non_field_errors"
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            flat.update(error_fields(value, prefix=path))
        return flat
    if isinstance(detail, list) and detail and not all(isinstance(item, str) for item in detail):
        flat = {}
        for i, item in enumerate(detail):
            flat.update(error_fields(item, prefix=f"{prefix}[{i}]") if item else {})
        return flat
    return {prefix: [str(item) for item in (detail if isinstance(detail, list) else [detail])]}


def validation_details(fields: dict[str, list[str]]) -> dict:
    """The `details` of every validation 400: the first bad field's path, and every bad
    field's messages under its flat path, so a client reads one shape for any body."""
    return {"field": next(iter(fields), ""), "fields": fields}


def _unprefixed(field: str, message: str) -> str:
    """`message` without the "field: " a service may have begun it with: the path is the
    key it is listed under."""
    return message.removeprefix(f"{field}: ")


def named_field_details(details: dict | list, *, message: str) -> dict | list:
    """A service's `details` naming one request field ({"field": name}, no `fields`) in the
    validation shape: its `fields` map added, so every refusal naming a field reads alike.
    A file error (details with a `file` key) is left as it is: its `field` names a record
    field on a line of the uploaded file ({"file", "line", "field", "problem"}), not a
    request field."""
    if not isinstance(details, dict) or "fields" in details or "file" in details:
        return details
    field = details.get("field")
    if not isinstance(field, str) or not field:
        return details
    return {**details, **validation_details({field: [_unprefixed(field, message)]})}


def field_refusal(exc: ApplicationError, *, field: str) -> ApplicationError:
    """A service's refusal (its status and code kept) attributed to the request field it is
    about, as a validation 400 is: "index: index 3 is building, …" with
    {"field": "index", "fields": {"index": [...]}}. For refusals only a service can make:
    an id the caller may not see (404, worded as for a missing one), an index not ready."""
    message = _unprefixed(field, exc.message)
    extra = exc.details if isinstance(exc.details, dict) else {}
    exc.message = f"{field}: {message}"
    exc.details = {**extra, **validation_details({field: [message]})}
    return exc


@contextmanager
def refusals_name(field: str | None, *, codes: Collection[str] | None = None) -> Iterator[None]:
    """Attribute the service refusals raised inside to request field `field` (None: to
    none); with `codes`, only the refusals with one of those codes."""
    try:
        yield
    except ApplicationError as exc:
        if field and (codes is None or exc.code in codes):
            field_refusal(exc, field=field)
        raise


class RequestTooLarge(ApplicationError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "request_too_large"


def error_body(code: str, message: str, details=None) -> dict:
    """The one error shape, also for answers made outside DRF (core.middleware)."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _request_refusal(exc: Exception) -> ApplicationError | None:
    """Django's refusals of a request body as it is read (raised inside the view, where DRF
    parses it), which Django itself would answer with an HTML page."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return RequestTooLarge(
            f"the request body is over the {limit}-byte limit of a request that is not a "
            "file upload (DATA_UPLOAD_MAX_MEMORY_SIZE)",
            details={"limit": limit},
        )
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return ApplicationError(str(exc), code="too_many_fields")
    return None


def api_exception_handler(exc, context):
    exc = _request_refusal(exc) or exc
    if isinstance(exc, ApplicationError):
        details = named_field_details(exc.details, message=exc.message)
        return Response(error_body(exc.code, exc.message, details), status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(getattr(exc, "message_dict", None) or exc.messages)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = error_fields(response.data)
        path, messages = next(iter(fields.items()), ("", ["Invalid input."]))
        message = f"{path}: {messages[0]}" if path else messages[0]
        # A bare ValidationError("...") has no field: named as a serializer's own check is.
        fields = {key or "non_field_errors": value for key, value in fields.items()}
        details = validation_details(fields) if fields else {}
    else:
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else ""
        message, details = str(detail) or str(exc), {}
    code = getattr(exc, "default_code", "error")
    if isinstance(exc, exceptions.APIException) and hasattr(exc, "get_codes"):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else code
    response.data = error_body(code, message, details)
    return response
