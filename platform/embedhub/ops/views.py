"""GET /metrics for Prometheus: a staff session, the bearer token in EMBEDHUB_METRICS_TOKEN,
or anyone when EMBEDHUB_METRICS_PUBLIC is on. It is a plain Django view because Prometheus
wants the text format, not JSON."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from embedhub.ops.metrics import metrics_exposition


def _bearer_ok(request: HttpRequest) -> bool:
    expected = settings.EMBEDHUB_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Constant-time, so the token cannot be guessed byte by byte from response times.
    return (
        bool(expected)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), expected.encode())
    )


def _refusal(request: HttpRequest) -> HttpResponse | None:
    if settings.EMBEDHUB_METRICS_PUBLIC or _bearer_ok(request):
        return None
    if request.user.is_authenticated:
        if request.user.is_staff:
            return None
        return HttpResponse("staff only\n", status=403, content_type="text/plain")
    response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    refused = _refusal(request)
    if refused is not None:
        return refused
    body, content_type = metrics_exposition()
    return HttpResponse(body, content_type=content_type)
