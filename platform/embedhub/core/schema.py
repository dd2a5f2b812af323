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
