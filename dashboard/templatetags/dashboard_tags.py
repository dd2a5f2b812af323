"""Small display filters shared by the dashboard templates."""

from __future__ import annotations

import json

from django import template

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """12.3 -> "12s", 95 -> "1m 35s", 7300 -> "2h 1m"; blank when unknown."""
    if seconds is None or seconds == "":
        return "—"
    seconds = int(round(float(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


@register.filter
def rate(value) -> str:
    if value is None or value == "":
        return "—"
    value = float(value)
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


@register.filter
def metric(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "—"
    try:
        return f"{float(value):.{int(digits)}f}"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def get(mapping, key):
    if isinstance(mapping, dict):
        return mapping.get(key)
    return None


@register.filter
def percent(value) -> str:
    if value is None or value == "":
        return "—"
    return f"{float(value):.0f}%"


@register.filter
def pretty_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@register.filter
def percent_of_one(value) -> str:
    """A share in [0, 1] as a percentage: 0.4667 -> "46.7%"."""
    if value is None or value == "":
        return "—"
    return f"{100 * float(value):.1f}%"


@register.filter
def ago(value) -> str:
    """A past datetime as "just now", "5 minutes ago", "2 days ago"."""
    from django.utils import timezone
    from django.utils.timesince import timesince

    if not value:
        return "—"
    if (timezone.now() - value).total_seconds() < 60:
        return "just now"
    return f"{timesince(value).split(',')[0]} ago"


@register.filter
def timeuntil_seconds(end, start) -> float | None:
    """Seconds from start to end (both datetimes)."""
    if not end or not start:
        return None
    return (end - start).total_seconds()
