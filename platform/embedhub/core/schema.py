"""OpenAPI naming for the styleguide's nested serializers.

Every API nests `InputSerializer` / `OutputSerializer` inside its view; drf-spectacular
names components after the class name alone, so they would collide. The qualified name
("SearchApi.InputSerializer" -> "SearchApiInput") is unique.
"""

from drf_spectacular.openapi import AutoSchema


class EmbedHubAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer, direction):
        cls = serializer.__class__
        return cls.__qualname__.replace(".", "") if "." in cls.__qualname__ else cls.__name__


def params_closed(result, generator, request, public):
    """Job params refuse unknown keys (jobs.params.ParamsSerializer), so their schemas say
    so: clients and fuzzers then know that a misspelt param is an error, not ignored."""
    for name, schema in result.get("components", {}).get("schemas", {}).items():
        if name.endswith(("Params", "ParamsRequest")) and schema.get("type") == "object":
            schema["additionalProperties"] = False
    return result
