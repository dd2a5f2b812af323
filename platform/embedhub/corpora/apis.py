from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from embedhub.core.errors import refusals_name
from embedhub.core.serializers import (
    MAX_FREE_TEXT,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictInputSerializer,
    no_body_check,
)
from embedhub.core.uploads import UploadLimit, upload_declared_check, upload_size_check
from embedhub.corpora import parsing, screening, selectors, services
from embedhub.corpora.jobs import MappingField
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
            "screening_enabled",
            "screening_fpr",
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
    class InputSerializer(StrictInputSerializer):
        name = StrictCharField(max_length=200)
        description = StrictCharField(
            required=False, allow_blank=True, default="", max_length=MAX_FREE_TEXT
        )

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
        no_body_check(data=request.data)
        services.corpus_delete(corpus=selectors.corpus_get(user=request.user, corpus_id=corpus_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_field(
    {"type": "string", "description": 'JSON object, e.g. {"id": "doc_id", "text": "body"}'}
)
class _MappingField(serializers.Field):
    """A JSON object, sent as a JSON string in multipart forms, checked as the ingest job
    checks it: a bad column is refused under this form field ("mapping.id"), not under the
    job param the upload fills ("params.mapping.id")."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            if not data.strip():
                return {}
            try:
                data = parsing.json_loads(data)
            except parsing.JsonRefused as exc:
                where = "" if exc.field == "json" else f"{exc.field}: "
                raise serializers.ValidationError(f"{where}{exc.problem}") from None
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                'must be a JSON object of field -> column, e.g. {"id": "doc_id", "text": "body"}'
            )
        return MappingField().to_internal_value(data)

    def to_representation(self, value):
        return value


class _UploadApi(APIView):
    parser_classes = [MultiPartParser, FormParser]
    throttle_scope = "uploads"

    @extend_schema_serializer(component_name="CorpusUploadInput")
    class InputSerializer(StrictInputSerializer):
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
            with refusals_name("corpus"):  # a 404 naming the form field, as job params do
                corpus = selectors.corpus_get(user=request.user, corpus_id=values["corpus"])
        elif values.get("corpus") not in (None, getattr(corpus, "pk", None)):
            # Another id than the URL's would be ignored: the file must not land elsewhere.
            raise serializers.ValidationError(
                {"corpus": f"the URL names corpus {corpus.pk}; leave corpus out"}
            )
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
            JobOutput(job, context={"request": request}).data,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": url},
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


class QuarantinedDocumentOutput(serializers.ModelSerializer):
    class Meta:
        model = Document
        fields = ["id", "external_id", "title", "text", "screen_score", "screen_features"]


class QuarantineDecisionOutput(serializers.Serializer):
    external_id = serializers.CharField()
    decision = serializers.CharField()
    score = serializers.FloatField(allow_null=True)
    excerpt = serializers.CharField()
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True)
    decided_at = serializers.DateTimeField()


class CorpusScreeningApi(APIView):
    """The corpus's ingest screening: on/off, its false-positive rate, the fitted screen."""

    class InputSerializer(StrictInputSerializer):
        enabled = StrictBooleanField()
        fpr = StrictFloatField(required=False, min_value=0.001, max_value=0.5)
        refit = StrictBooleanField(
            required=False, default=False, help_text="refit the screen from the corpus now"
        )

    class OutputSerializer(serializers.Serializer):
        enabled = serializers.BooleanField()
        fpr = serializers.FloatField()
        screen = serializers.DictField(allow_null=True)
        quarantined = serializers.IntegerField()

    def _output(self, corpus: Corpus) -> dict:
        row = selectors.corpus_screen_get(corpus=corpus)
        screen = None
        if row is not None:
            screen = {
                "fpr": row.fpr,
                "threshold": row.threshold,
                "features": row.features,
                "n_documents": row.n_documents,
                "fitted_at": row.updated_at.isoformat(),
            }
        return self.OutputSerializer(
            {
                "enabled": corpus.screening_enabled,
                "fpr": corpus.screening_fpr,
                "screen": screen,
                "quarantined": selectors.quarantine_list(corpus=corpus).count(),
            }
        ).data

    @extend_schema(responses=OutputSerializer)
    def get(self, request, corpus_id: int):
        return Response(self._output(selectors.corpus_get(user=request.user, corpus_id=corpus_id)))

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def patch(self, request, corpus_id: int):
        corpus = selectors.corpus_get(user=request.user, corpus_id=corpus_id)
        # Partial: a form-encoded body that leaves out `enabled` would otherwise read as
        # false (HTML forms omit unchecked boxes) and turn screening off unasked.
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        corpus = screening.corpus_screening_update(
            corpus=corpus,
            enabled=values.get("enabled", corpus.screening_enabled),
            fpr=values.get("fpr"),
        )
        if values.get("refit") and corpus.screening_enabled:
            screening.corpus_screen_fit(corpus=corpus)
        return Response(self._output(corpus))


class QuarantineListApi(APIView):
    """Documents the ingest screen held back (most suspicious first), and past decisions."""

    class OutputSerializer(serializers.Serializer):
        documents = QuarantinedDocumentOutput(many=True)
        decisions = QuarantineDecisionOutput(many=True)

    @extend_schema(responses=OutputSerializer)
    def get(self, request, corpus_id: int):
        corpus = selectors.corpus_get(user=request.user, corpus_id=corpus_id)
        return Response(
            self.OutputSerializer(
                {
                    "documents": selectors.quarantine_list(corpus=corpus)[:500],
                    "decisions": selectors.quarantine_decisions(corpus=corpus)[:200],
                }
            ).data
        )


class QuarantineDecideApi(APIView):
    """approve: the document becomes searchable; reject: it is deleted (and recorded)."""

    @extend_schema(request=None, responses={200: QuarantineDecisionOutput})
    def post(self, request, corpus_id: int, document_id: int, action: str):
        no_body_check(data=request.data)
        corpus = selectors.corpus_get(user=request.user, corpus_id=corpus_id)
        document = selectors.quarantined_document_get(corpus=corpus, document_id=document_id)
        decide = (
            screening.document_quarantine_approve
            if action == "approve"
            else screening.document_quarantine_reject
        )
        decision = decide(document=document, user=request.user)
        return Response(QuarantineDecisionOutput(decision).data)
