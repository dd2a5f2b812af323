"""Ownership scoping shared by every app: users see their own objects, staff see all."""

from __future__ import annotations

from django.db.models import QuerySet


def owned_by(queryset: QuerySet, *, user, field: str = "owner") -> QuerySet:
    # Anonymous users own nothing (also what schema generation sees).
    if user is None or not user.is_authenticated:
        return queryset.none()
    if user.is_staff:
        return queryset
    return queryset.filter(**{field: user})
