"""Input serializers and fields shared by the apps' APIs.

JSON has types, so a JSON body is strict: an integer must be a JSON number without a
fraction, a boolean must be true or false, a string must be a string. HTML forms and
multipart uploads only send strings, so a form's values are parsed from their string forms
("12", "true"): the serializer context's `from_form` says which. StrictInputSerializer sets
it for a body a form or multipart parser read (a QueryDict); code that validates form input
itself passes `context={"from_form": True}`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from django.http import QueryDict
from rest_framework import serializers

# A sane bound for free text a user sets (a description): a TextField has none of its own.
MAX_FREE_TEXT = 10_000


def _from_form(field: serializers.Field) -> bool:
    return bool(field.context.get("from_form"))


def _range_messages(noun: str, low, high) -> dict[str, str]:
    """Bound messages that give the whole range and the value that missed it."""
    if low is not None and high is not None:
        text = f"must be {noun} between {low} and {high}, not %(show_value)s"
        return {"min_value": text, "max_value": text}
    return {
        "min_value": f"must be {noun} of at least {low}, not %(show_value)s",
        "max_value": f"must be {noun} of at most {high}, not %(show_value)s",
    }


def _number(data, *, whole: bool) -> bool:
    if isinstance(data, bool) or not isinstance(data, int | float):
        return False
    return not whole or isinstance(data, int) or data.is_integer()


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "must be an integer"}

    def __init__(self, **kwargs):
        messages = _range_messages("an integer", kwargs.get("min_value"), kwargs.get("max_value"))
        super().__init__(
            **{**kwargs, "error_messages": {**messages, **kwargs.get("error_messages", {})}}
        )

    def to_internal_value(self, data):
        if not (_number(data, whole=True) or (_from_form(self) and isinstance(data, str))):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    default_error_messages = {"invalid": "must be a number"}

    def __init__(self, **kwargs):
        messages = _range_messages("a number", kwargs.get("min_value"), kwargs.get("max_value"))
        super().__init__(
            **{**kwargs, "error_messages": {**messages, **kwargs.get("error_messages", {})}}
        )

    def to_internal_value(self, data):
        if not (_number(data, whole=False) or (_from_form(self) and isinstance(data, str))):
            self.fail("invalid")
        value = super().to_internal_value(data)
        if not math.isfinite(value):  # "nan" passes every bound check
            self.fail("invalid")
        return value


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "must be true or false"}

    def to_internal_value(self, data):
        if not (isinstance(data, bool) or (_from_form(self) and isinstance(data, str))):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A string, never a number or an object coerced to one."""

    default_error_messages = {
        "invalid": "must be a string",
        "blank": "must not be empty",
        "max_length": "must be at most {max_length} characters, not %(show_value)s",
    }

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictChoiceField(serializers.ChoiceField):
    """One of a fixed set of strings; the error lists them."""

    def to_internal_value(self, data):
        if not isinstance(data, str) or data not in self.choice_strings_to_values:
            choices = ", ".join(str(choice) for choice in self.choices)
            raise serializers.ValidationError(
                f"{data!r} is not one of: {choices}", code="invalid_choice"
            )
        return super().to_internal_value(data)


class StrictPrimaryKeyRelatedField(serializers.PrimaryKeyRelatedField):
    """An object by its integer id: DRF's field also takes "7" or 7.0 from a JSON body."""

    default_error_messages = {"incorrect_type": "must be an integer id"}

    def to_internal_value(self, data):
        if not (_number(data, whole=True) or (_from_form(self) and isinstance(data, str))):
            self.fail("incorrect_type")
        return super().to_internal_value(data)


class StrictInputSerializer(serializers.Serializer):
    """A request body whose keys are exactly the declared fields. DRF drops an undeclared
    key without a word, so a misspelt option ("compensaton") or a read-only one would
    answer 200 having done something other than what was asked: refuse it by name."""

    # The browsable API's HTML forms send their CSRF token beside a body's fields:
    # transport, not input. A nested object (a job's params) sets this to frozenset().
    transport_keys = frozenset({"csrfmiddlewaretoken"})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # DRF's form and multipart parsers give a QueryDict: strings the fields may parse.
        if isinstance(getattr(self, "initial_data", None), QueryDict):
            self._context = {**self._context, "from_form": True}

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields) - self.transport_keys)
            if unknown:
                allowed = ", ".join(sorted(self.fields)) or "none (this request takes no body)"
                raise serializers.ValidationError(
                    {key: [f"unknown field; allowed: {allowed}"] for key in unknown}
                )
        return super().to_internal_value(data)


class NoInputSerializer(StrictInputSerializer):
    """The body of an action (cancel, retry, publish, …): none, or an empty object."""


def no_body_check(*, data) -> None:
    """Refuse a body sent to an action that takes none, naming its keys: ignored, a
    `{"force": true}` would answer 200 having done something other than what was asked."""
    if data is None or (isinstance(data, Mapping) and not data):
        return
    NoInputSerializer(data=data).is_valid(raise_exception=True)
