"""Input serializers shared by the apps' APIs."""

from __future__ import annotations

from collections.abc import Mapping

from rest_framework import serializers

# Sent by the browsable API's HTML forms beside the fields: transport, not input.
TRANSPORT_KEYS = frozenset({"csrfmiddlewaretoken"})


class StrictInputSerializer(serializers.Serializer):
    """A request body whose keys are exactly the declared fields. DRF drops an undeclared
    key without a word, so a misspelt option ("compensaton") or a read-only one would
    answer 200 having done something other than what was asked: refuse it by name."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields) - TRANSPORT_KEYS)
            if unknown:
                allowed = ", ".join(sorted(self.fields))
                raise serializers.ValidationError(
                    {key: [f"unknown field; allowed: {allowed}"] for key in unknown}
                )
        return super().to_internal_value(data)
