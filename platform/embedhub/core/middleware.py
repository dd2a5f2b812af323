"""Refusals made before any view runs, for what no view could handle well."""

from __future__ import annotations

from django.core.exceptions import TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from embedhub.core.errors import error_body, validation_details

API_PREFIX = "/api/"
NUL = "\x00"


def _nul_location(request: HttpRequest) -> tuple[str, str] | None:
    """(where, name) of the first NUL in the URL: ("path", "path") or ("query", the
    parameter's name), None when there is none."""
    if NUL in request.path_info:
        return "path", "path"
    for key, values in request.GET.lists():
        if NUL in key or any(NUL in value for value in values):
            return "query", key.replace(NUL, "\\x00")
    return None


class NulCharacterMiddleware:
    """Postgres text cannot hold a NUL character (0x00), so a %00 in a query-string filter
    or a path capture (a document's external id) reached the database as a DataError, a
    500. Refused here once for every list filter and every URL: 400, in the API's error
    shape naming the parameter, a plain 400 elsewhere (the dashboard)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            found = _nul_location(request)
        except TooManyFieldsSent:
            found = None  # the view reads request.GET again and refuses it in its own shape
        if found is None:
            return self.get_response(request)
        where, name = found
        problem = "must not contain a NUL character (%00)"
        message = f"the URL path {problem}" if where == "path" else f"{name}: {problem}"
        if not request.path_info.startswith(API_PREFIX):
            return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
        details = {**validation_details({name: [problem]}), "location": where}
        return JsonResponse(error_body("invalid", message, details), status=400)
