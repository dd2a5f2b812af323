"""Building blocks for the job kinds' `Params` serializers.

JSON has types, so the API is strict: an integer param must be a JSON number without a
fraction, a boolean must be true or false, an id must be an integer (the strict fields are
core.serializers', shared with every other request body). HTML forms only send strings, so
the dashboard validates with `context={"from_form": True}`, which lets the same fields
parse their own string forms ("12", "true"): the form never guesses types.

Every error names its field; `params_error` turns a serializer's errors into one
ApplicationError whose paths start with "params." (404 when an id named an object the user
may not see, 400 otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rest_framework import serializers

from embedhub.core.errors import ApplicationError, error_fields, validation_details
from embedhub.core.serializers import (
    StrictFloatField,
    StrictInputSerializer,
    StrictIntegerField,
)

NOT_FOUND = "not_found"


class OwnedObjectField(StrictIntegerField):
    """The id of an object the user may see, resolved through its app's owner-scoped
    selector. An id the user may not see is reported like a missing one (404), so ids
    don't leak; the validated value is the object itself."""

    def __init__(self, *, lookup: Callable[..., object], noun: str, **kwargs):
        self.lookup, self.noun = lookup, noun
        super().__init__(min_value=1, **kwargs)
        # Validators run on the validated value, which is the object here: the id's bound
        # is checked before the lookup instead (min_value still documents it in OpenAPI).
        self.validators = []

    def to_internal_value(self, data):
        pk = super().to_internal_value(data)
        if pk < 1:
            # The message is a validator's (%-placeholders), which fail() does not fill.
            message = self.error_messages["min_value"] % {"show_value": pk}
            raise serializers.ValidationError(message, code="min_value")
        try:
            return self.lookup(user=self.context.get("user"), pk=pk)
        except ApplicationError as exc:
            if exc.status_code == 404:
                raise serializers.ValidationError(
                    f"{self.noun} {pk} not found", code=NOT_FOUND
                ) from None
            raise serializers.ValidationError(exc.message, code=exc.code) from None

    def to_representation(self, value):
        return getattr(value, "pk", value)


class ParamsSerializer(StrictInputSerializer):
    """A kind's params: an object whose keys are exactly the declared fields."""

    default_error_messages = {"invalid": "must be an object of named params, not {datatype}"}
    transport_keys = frozenset()  # params are nested in the body: no form token belongs here

    def get_fields(self):
        fields = super().get_fields()
        for field in fields.values():
            field.error_messages["required"] = "required"
            field.error_messages["null"] = "must not be null"
        return fields


def _codes(detail) -> set[str]:
    if isinstance(detail, Mapping):
        return set().union(*(_codes(v) for v in detail.values())) if detail else set()
    if isinstance(detail, list):
        return set().union(*(_codes(v) for v in detail)) if detail else set()
    return {getattr(detail, "code", "invalid")}


class ParamsInvalid(ApplicationError):
    code = "invalid_params"


class ParamsNotFound(ApplicationError):
    status_code = 404
    code = NOT_FOUND


def _said_once(path: str, message: str) -> str:
    """`message` without the field name a check may have begun it with ("query_ids: 4 not
    in …", "params.path must name …"): the error puts the full path before it once."""
    leaf = path.rsplit(".", 1)[-1]
    # A bare leaf followed by a space is left alone: "corpus 5 not found" names an object.
    for name in (f"{path}: ", f"{path} ", f"{leaf}: "):
        if message.startswith(name):
            return message[len(name) :]
    return message


def params_error(detail, *, prefix: str = "params") -> ApplicationError:
    """One error for all of a serializer's complaints, each under its full field path."""
    fields = {
        path: [_said_once(path, str(message)) for message in messages]
        for path, messages in error_fields(detail, prefix=prefix).items()
    }
    first, messages = next(iter(fields.items()))
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    cls = ParamsNotFound if NOT_FOUND in _codes(detail) else ParamsInvalid
    return cls(f"{first}: {messages[0]}{more}", details=validation_details(fields))


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "an array"}.get(type(value), type(value).__name__)


def params_validate(*, serializer: type[serializers.Serializer], user, params, from_form=False):
    """Validated params, or the one error naming every bad field."""
    if not isinstance(params, Mapping):
        # Said as it is: read field by field, it would report only a missing first field.
        raise params_error([f"must be an object, not {_json_type(params)}"])
    checked = serializer(data=params, context={"user": user, "from_form": from_form})
    if not checked.is_valid():
        raise params_error(checked.errors)
    return checked.validated_data


def params_field(field: str, exc: ApplicationError) -> ApplicationError:
    """A service's refusal (keeping its status and code), attributed to the params field it
    is about, for checks that only a service can make (drift vectors exist, ...)."""
    path = f"params.{field}"
    exc.details = {**(exc.details if isinstance(exc.details, dict) else {}), "field": path}
    exc.message = f"{path}: {_said_once(path, exc.message)}"
    return exc


# One-line declarations for the kinds' Params: most params are optional ids and bounded numbers.


def owned(
    lookup: Callable[..., object], noun: str, help_text: str, *, optional: bool = False
) -> OwnedObjectField:
    """An id resolved by `lookup(user=, pk=)`; optional ones may be absent or null."""
    extra = {"required": False, "allow_null": True} if optional else {}
    return OwnedObjectField(lookup=lookup, noun=noun, help_text=help_text, **extra)


def integer(low: int, high: int, help_text: str, *, default: int | None = None):
    """A bounded integer; without a default it is optional (absent or null)."""
    extra = {"default": default} if default is not None else {"required": False, "allow_null": True}
    return StrictIntegerField(min_value=low, max_value=high, help_text=help_text, **extra)


def number(low: float, high: float, help_text: str, *, default: float | None = None):
    """A bounded number; without a default it is optional (absent or null)."""
    extra = {"default": default} if default is not None else {"required": False, "allow_null": True}
    return StrictFloatField(min_value=low, max_value=high, help_text=help_text, **extra)
