"""Input serializers shared by the apps' APIs."""

from __future__ import annotations

from collections.abc import Mapping

from rest_framework import serializers


class StrictInputSerializer(serializers.Serializer):
    """A request body whose keys are exactly the declared fields. DRF drops an undeclared
    key without a word, so a misspelt option ("compensaton") or a read-only one would
    answer 200 having done something other than what was asked: refuse it by name."""

    # The browsable API's HTML forms send their CSRF token beside a body's fields:
    # transport, not input. A nested object (a job's params) sets this to frozenset().
    transport_keys = frozenset({"csrfmiddlewaretoken"})

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields) - self.transport_keys)
            if unknown:
                allowed = ", ".join(sorted(self.fields))
                raise serializers.ValidationError(
                    {key: [f"unknown field; allowed: {allowed}"] for key in unknown}
                )
        return super().to_internal_value(data)
