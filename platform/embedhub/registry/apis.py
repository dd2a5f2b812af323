from django.utils import timezone
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from embedhub.core.filters import VisibleObjectFilter
from embedhub.core.serializers import (
    StrictCharField,
    StrictInputSerializer,
    StrictPrimaryKeyRelatedField,
    no_body_check,
)
from embedhub.core.server_paths import ServerPathsHidden
from embedhub.registry import selectors, services
from embedhub.registry.models import EmbeddingModel, ModelVersion


class VersionSummaryOutput(ServerPathsHidden, serializers.ModelSerializer):
    # A local source is a directory on the server: only staff see where.
    server_path_fields = ("source",)
    model = serializers.CharField(source="model.name", read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "model",
            "version",
            "status",
            "visibility",
            "parent",
            "source",
            "dimension",
            "drift_norm",
            "adapter",
            "created_at",
        ]

    adapter = serializers.SerializerMethodField(
        help_text="the compensation adapter's method and held-out numbers; null: none"
    )

    def get_adapter(self, version) -> dict | None:
        return selectors.adapter_summary(version.adapter)


class ModelOutput(serializers.ModelSerializer):
    versions = serializers.SerializerMethodField()

    class Meta:
        model = EmbeddingModel
        fields = ["id", "name", "description", "created_at", "versions"]

    def get_versions(self, model) -> list[dict]:
        return VersionSummaryOutput(model.versions.all(), many=True, context=self.context).data


# What a version's provenance says to an account other than its owner: how it was made,
# not which query set, corpus or file (those are the owner's).
PUBLIC_PROVENANCE = ("source", "kind", "package", "hub_id", "pairs", "queries", "judgements")


class VersionDetailOutput(ServerPathsHidden, serializers.ModelSerializer):
    # Where the weights, the adapters, a Hub snapshot or a training file lie on the server:
    # staff see the paths, others their names (relative to ARTIFACT_ROOT / MEDIA_ROOT).
    server_path_fields = ("source", "artifact_path", "provenance", "adapter", "training_params")
    model = serializers.CharField(source="model.name", read_only=True)
    ancestors = serializers.SerializerMethodField()
    children = serializers.SerializerMethodField()
    provenance = serializers.SerializerMethodField()
    adapter = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "model",
            "version",
            "status",
            "visibility",
            "parent",
            "ancestors",
            "children",
            "source",
            "artifact_path",
            "dimension",
            "pooling",
            "normalize",
            "max_tokens",
            "query_prefix",
            "document_prefix",
            "drift_norm",
            "adapter",
            "training_params",
            "provenance",
            "loss_curve",
            "created_at",
            "updated_at",
        ]

    # Lineage shows only the versions the requesting user may see (context["user"]).
    def get_ancestors(self, version) -> list[dict]:
        chain = selectors.model_version_ancestors(user=self.context["user"], version=version)
        return VersionSummaryOutput(chain, many=True, context=self.context).data

    def get_children(self, version) -> list[dict]:
        children = selectors.model_version_children(user=self.context["user"], version=version)
        return VersionSummaryOutput(children, many=True, context=self.context).data

    def _owned(self, version) -> bool:
        user = self.context["user"]
        return user.is_staff or version.owner_id in (None, user.pk)

    def get_provenance(self, version) -> dict:
        provenance = version.provenance or {}
        if self._owned(version):
            return provenance
        return {k: v for k, v in provenance.items() if k in PUBLIC_PROVENANCE}

    def get_adapter(self, version) -> dict:
        # Per-corpus adapters are keyed by the owner's corpora and indexes.
        adapter = version.adapter or {}
        if self._owned(version):
            return adapter
        return {k: v for k, v in adapter.items() if k != "per_corpus"}


def _detail(version: ModelVersion, *, user) -> dict:
    return VersionDetailOutput(version, context={"user": user}).data


class ModelListApi(ListAPIView):
    """Embedding models with their versions."""

    serializer_class = ModelOutput
    filterset_class = None

    def get_queryset(self):
        return selectors.model_list(user=self.request.user)


class ModelVersionFilter(filters.FilterSet):
    model = filters.CharFilter(field_name="model__name", help_text="the model's name")
    # A version the caller may not see is refused as a missing one is, as every list's id
    # filters are (core.filters).
    parent = VisibleObjectFilter(
        visible=selectors.model_version_visible, help_text="the versions fine-tuned from it"
    )

    class Meta:
        model = ModelVersion
        fields = ["model", "status", "parent"]


class ModelVersionListCreateApi(ListAPIView):
    """Versions the caller may see (`?model=<name>`, `?status=ready`, `?parent=<id>`); staff
    register new, shared ones with POST."""

    @extend_schema_serializer(component_name="ModelVersionRegisterInput")
    class InputSerializer(StrictInputSerializer):
        source = StrictCharField(
            required=False,
            allow_null=True,
            default=None,
            max_length=ModelVersion._meta.get_field("source").max_length,
            help_text="a directory on the server or a Hub id; empty for the bundled base model",
        )
        name = StrictCharField(required=False, allow_null=True, default=None, max_length=200)
        parent = StrictPrimaryKeyRelatedField(
            queryset=ModelVersion.objects.all(), required=False, allow_null=True, default=None
        )

    serializer_class = VersionSummaryOutput
    filterset_class = ModelVersionFilter

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsAuthenticated(), IsAdminUser()]
        return super().get_permissions()

    def get_queryset(self):
        return selectors.model_version_list(user=self.request.user)

    @extend_schema(request=InputSerializer, responses={201: VersionDetailOutput})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        started = timezone.now()
        version = services.model_version_register(**data.validated_data)
        created = version.created_at >= started  # else: that source was registered already
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(_detail(version, user=request.user), status=code)


class ModelVersionDetailApi(APIView):
    @extend_schema(responses=VersionDetailOutput)
    def get(self, request, version_id: int):
        version = selectors.model_version_get(user=request.user, version_id=version_id)
        return Response(_detail(version, user=request.user))


class ModelVersionPublishApi(APIView):
    """Staff share a private (fine-tuned) version with every account."""

    @extend_schema(request=None, responses=VersionDetailOutput)
    def post(self, request, version_id: int):
        no_body_check(data=request.data)
        # Resolved first, so a version the caller may not see is a 404 like everywhere
        # else; the service refuses non-staff (403) for the ones they may see.
        version = selectors.model_version_get(user=request.user, version_id=version_id)
        version = services.model_version_publish(version=version, user=request.user)
        return Response(_detail(version, user=request.user))
