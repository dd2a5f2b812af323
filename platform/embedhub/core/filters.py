"""List filters shared by the apps' APIs."""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import QuerySet
from django_filters import rest_framework as filters


class VisibleObjectFilter(filters.ModelChoiceFilter):
    """A filter by the id of an object the requesting user may see, resolved through its
    app's owner-scoped selector `visible(user=)`. An id of another account's object is
    refused exactly like one that does not exist (same status, same message): a filter
    over every row told a foreign id (200, empty) from a missing one (400)."""

    def __init__(self, *, visible: Callable[..., QuerySet], **kwargs):
        super().__init__(
            # Schema generation has no request: no user, so an empty queryset.
            queryset=lambda request: visible(user=getattr(request, "user", None)),
            # Shown after the parameter's name: "corpus: 7 not found".
            error_messages={"invalid_choice": "%(value)s not found"},
            **kwargs,
        )
