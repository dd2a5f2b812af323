"""Ownership scoping shared by every app: users see their own objects, staff see all."""

from __future__ import annotations

from django.db.models import QuerySet


def owned_by(queryset: QuerySet, *, user, field: str = "owner") -> QuerySet:
    if user.is_staff:
        return queryset
    return queryset.filter(**{field: user})
