"""Small display filters shared by the dashboard templates."""

from __future__ import annotations

import json

from django import template
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from embedhub.core.server_paths import server_paths_for

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
def server_paths(value, user):
    """`value` (text or JSON) with server paths as `user` may see them: whole for staff,
    shortened for everyone else (core.server_paths), as the REST API shows them."""
    return server_paths_for(user, value)


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


# ------------------------------------------------------------------ job forms
# `job_form` is the refused submission that the page's view popped from the session:
# {"kind", "page", "errors": {field: [messages]}, "values": {field: posted value}}, with
# fields named as the form's inputs ("config.epochs"). Each tag takes the form's kind, so
# only the form that was submitted shows errors and refilled values.


def _submitted(job_form, kind: str) -> dict:
    """The refused submission if it came from this form, else {}."""
    return job_form if isinstance(job_form, dict) and job_form.get("kind") == kind else {}


def _errors(job_form, kind: str, field: str) -> list[str]:
    return _submitted(job_form, kind).get("errors", {}).get(field, [])


def _error_id(kind: str, field: str) -> str:
    return f"{kind}-{field.replace('.', '-')}-error"


@register.simple_tag
def field_errors(job_form, kind: str, field: str) -> str:
    """The messages for one input, placed right under it."""
    errors = _errors(job_form, kind, field)
    if not errors:
        return ""
    return format_html(
        '<div class="field-error" id="{}">{}</div>', _error_id(kind, field), "; ".join(errors)
    )


@register.simple_tag
def field_invalid(job_form, kind: str, field: str) -> str:
    """Attributes for an input with an error: marked invalid (styled red) and pointing
    screen readers at its message."""
    if not _errors(job_form, kind, field):
        return ""
    return format_html(' aria-invalid="true" aria-describedby="{}"', _error_id(kind, field))


@register.simple_tag
def form_errors(job_form, kind: str, inputs: str = "") -> str:
    """Atop a form: the messages no input of it can show, i.e. about the params as a whole,
    a hidden field (the corpus) or one the form does not offer. `inputs` names, space
    separated, the fields that have their own `field_errors`."""
    shown = set(inputs.split())
    errors = _submitted(job_form, kind).get("errors", {})
    rows = [
        (f"{field}: " if field else "", "; ".join(texts))
        for field, texts in errors.items()
        if field not in shown
    ]
    return format_html_join("", '<div class="field-error form-error" role="alert">{}{}</div>', rows)


@register.simple_tag
def field_value(job_form, kind: str, field: str, default="") -> str:
    """An input's value: as submitted when its form was refused, else its default."""
    values = _submitted(job_form, kind).get("values")
    return values.get(field, default) if values is not None else default


@register.simple_tag
def selected(job_form, kind: str, field: str, value, default=None) -> str:
    """Selects the option that was submitted; before a submission, the one equal to `default`."""
    submitted = _submitted(job_form, kind)
    chosen = submitted.get("values", {}).get(field) if submitted else default
    return " selected" if chosen is not None and str(chosen) == str(value) else ""
