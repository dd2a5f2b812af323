import json

from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from embedhub.core.uploads import UploadLimit, upload_declared_check, upload_size_check
from embedhub.corpora import parsing, selectors, services
from embedhub.corpora.models import Corpus, Document
from embedhub.jobs.apis import JobOutput

CORPUS_LIMIT = UploadLimit(
    setting="EMBEDHUB_MAX_UPLOAD_BYTES",
    advice="split the corpus into several files and upload them one by one (re-uploads upsert)",
)


class CorpusOutput(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    document_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Corpus
        fields = [
            "id",
            "name",
            "description",
            "owner",
            "document_count",
            "active_index",
            "created_at",
            "updated_at",
        ]


class DocumentOutput(serializers.ModelSerializer):
    class Meta:
        model = Document
        fields = [
            "id",
            "external_id",
            "title",
            "text",
            "metadata",
            "content_hash",
            "created_at",
            "updated_at",
        ]


class CorpusListCreateApi(ListAPIView):
    """Your corpora (`?name=` matches part of the name), or create one."""

    @extend_schema_serializer(component_name="CorpusCreateInput")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        description = serializers.CharField(required=False, allow_blank=True, default="")

    serializer_class = CorpusOutput
    filterset_class = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Corpus.objects.none()
        return selectors.corpus_list(
            user=self.request.user, name=self.request.query_params.get("name")
        )

    @extend_schema(request=InputSerializer, responses={201: CorpusOutput})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        corpus = services.corpus_create(owner=request.user, **data.validated_data)
        corpus = selectors.corpus_get(user=request.user, corpus_id=corpus.pk)
        return Response(CorpusOutput(corpus).data, status=status.HTTP_201_CREATED)


class CorpusDetailApi(APIView):
    @extend_schema(responses=CorpusOutput)
    def get(self, request, corpus_id: int):
        return Response(
            CorpusOutput(selectors.corpus_get(user=request.user, corpus_id=corpus_id)).data
        )

    @extend_schema(responses={204: None})
    def delete(self, request, corpus_id: int):
        services.corpus_delete(corpus=selectors.corpus_get(user=request.user, corpus_id=corpus_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_field(
    {"type": "string", "description": 'JSON object, e.g. {"id": "doc_id", "text": "body"}'}
)
class _MappingField(serializers.Field):
    """A JSON object, sent as a JSON string in multipart forms."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            if not data.strip():
                return {}
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise serializers.ValidationError(f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                'must be a JSON object of field -> column, e.g. {"id": "doc_id", "text": "body"}'
            )
        return data

    def to_representation(self, value):
        return value


class _UploadApi(APIView):
    parser_classes = [MultiPartParser, FormParser]
    throttle_scope = "uploads"

    @extend_schema_serializer(component_name="CorpusUploadInput")
    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()
        corpus = serializers.IntegerField(required=False)
        name = serializers.CharField(required=False, max_length=200)
        format = serializers.ChoiceField(choices=parsing.FORMATS, required=False)
        mapping = _MappingField(required=False)
        skip_invalid = serializers.BooleanField(required=False, default=False)

    def _upload(self, request, corpus: Corpus | None) -> Response:
        upload_declared_check(request=request, limit=CORPUS_LIMIT)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        uploaded = values["file"]
        upload_size_check(files=[uploaded], limit=CORPUS_LIMIT)
        if corpus is None and values.get("corpus") is not None:
            corpus = selectors.corpus_get(user=request.user, corpus_id=values["corpus"])
        job = services.corpus_upload(
            owner=request.user,
            uploaded_file=uploaded,
            corpus=corpus,
            corpus_name=values.get("name"),
            format=values.get("format"),
            mapping=values.get("mapping"),
            skip_invalid=values["skip_invalid"],
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
        url = reverse("job-detail", args=[job.pk])
        return Response(
            JobOutput(job).data, status=status.HTTP_202_ACCEPTED, headers={"Location": url}
        )


class CorpusUploadApi(_UploadApi):
    """Upload a file into this corpus: 202 with the ingest job (Location: the job)."""

    @extend_schema(
        operation_id="corpora_upload_into",
        request={"multipart/form-data": _UploadApi.InputSerializer},
        responses={202: JobOutput},
    )
    def post(self, request, corpus_id: int):
        return self._upload(request, selectors.corpus_get(user=request.user, corpus_id=corpus_id))


class CorpusNewUploadApi(_UploadApi):
    """Upload a file into the corpus named by `corpus` (id) or `name` (created if new)."""

    @extend_schema(
        operation_id="corpora_upload",
        request={"multipart/form-data": _UploadApi.InputSerializer},
        responses={202: JobOutput},
    )
    def post(self, request):
        return self._upload(request, None)


class DocumentListApi(ListAPIView):
    """A corpus's documents; `?external_id=` picks one."""

    serializer_class = DocumentOutput
    filterset_class = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Document.objects.none()
        corpus = selectors.corpus_get(user=self.request.user, corpus_id=self.kwargs["corpus_id"])
        return selectors.document_list(
            corpus=corpus, external_id=self.request.query_params.get("external_id")
        )


class DocumentDetailApi(APIView):
    @extend_schema(responses=DocumentOutput)
    def get(self, request, corpus_id: int, external_id: str):
        corpus = selectors.corpus_get(user=request.user, corpus_id=corpus_id)
        return Response(
            DocumentOutput(selectors.document_get(corpus=corpus, external_id=external_id)).data
        )
