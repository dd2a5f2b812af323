from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.generics import GenericAPIView, ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from embedhub.audits import selectors
from embedhub.audits.models import RobustnessAudit
from embedhub.core.filters import VisibleObjectFilter
from embedhub.registry.selectors import model_version_visible
from embedhub.vectors.selectors import index_list

SUMMARY_FIELDS = [
    "id",
    "job",
    "index",
    "corpus",
    "model_version",
    "query_set",
    "state",
    "concept",
    "message",
    "n_passages",
    "n_held_in",
    "n_held_out",
    "headline",
    "seconds",
    "created_at",
    "completed_at",
]


class AuditSummaryOutput(serializers.ModelSerializer):
    corpus = serializers.IntegerField(source="index.corpus_id", read_only=True)
    n_passages = serializers.SerializerMethodField()
    n_held_in = serializers.SerializerMethodField()
    n_held_out = serializers.SerializerMethodField()
    headline = serializers.SerializerMethodField(help_text="appeared@10 on held-out queries")

    class Meta:
        model = RobustnessAudit
        fields = SUMMARY_FIELDS

    def get_n_passages(self, audit) -> int:
        return len(audit.passages)

    def get_n_held_in(self, audit) -> int:
        return len(audit.held_in)

    def get_n_held_out(self, audit) -> int:
        return len(audit.held_out)

    def get_headline(self, audit) -> dict:
        results = audit.results or {}
        return {
            ref: (results.get(ref) or {}).get(selectors.HEADLINE) for ref in selectors.REFERENCES
        }


class AuditDetailOutput(AuditSummaryOutput):
    class Meta:
        model = RobustnessAudit
        fields = [
            *SUMMARY_FIELDS,
            "params",
            "held_in",
            "held_out",
            "passages",
            "results",
            "geometry",
            "timings",
        ]


class AuditFilter(filters.FilterSet):
    index = VisibleObjectFilter(visible=index_list)
    model_version = VisibleObjectFilter(visible=model_version_visible)

    class Meta:
        model = RobustnessAudit
        fields = ["index", "model_version", "concept", "state"]


class AuditListApi(ListAPIView):
    """Your robustness audits; submit one with POST /api/v1/jobs/ {"kind": "audit", ...}."""

    serializer_class = AuditSummaryOutput
    filterset_class = AuditFilter
    queryset = RobustnessAudit.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):
        return selectors.audit_list(user=self.request.user)


class AuditDetailApi(APIView):
    @extend_schema(responses=AuditDetailOutput)
    def get(self, request, audit_id: int):
        audit = selectors.audit_get(user=request.user, audit_id=audit_id)
        return Response(AuditDetailOutput(audit).data)


class AuditComparisonOutput(serializers.Serializer):
    concept = serializers.CharField()
    corpus = serializers.IntegerField()
    corpus_name = serializers.CharField()
    adaptive = serializers.BooleanField()
    gaslite_recall_at_1pct = serializers.FloatField(source="gaslite_recall@1%", allow_null=True)
    gaslite_screened = serializers.FloatField(
        source="gaslite_appeared@10_screened",
        allow_null=True,
        help_text="held-out appeared@10 with the combined screen at 1 % on",
    )
    model_version = serializers.IntegerField()
    model_version_label = serializers.CharField()
    audit = serializers.IntegerField()
    index = serializers.IntegerField()
    n_passages = serializers.IntegerField()
    n_held_out = serializers.IntegerField()
    gaslite = serializers.FloatField(allow_null=True)
    message_only = serializers.FloatField(allow_null=True)
    centroid = serializers.FloatField(allow_null=True)
    non_concept = serializers.FloatField(allow_null=True)


class AuditComparisonFilter(filters.FilterSet):
    index = VisibleObjectFilter(visible=index_list, help_text="only the audits of this index")

    class Meta:
        model = RobustnessAudit
        fields = ["concept", "index"]


class AuditComparisonApi(GenericAPIView):
    """appeared@10 per model version per concept (latest complete audit of each pair)."""

    # Validated and documented as the lists' filters are: ?index= of an index the caller may
    # not see is refused as a missing one is.
    filterset_class = AuditComparisonFilter
    pagination_class = None  # one row per pair, unpaginated as before
    queryset = RobustnessAudit.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):
        return selectors.audit_list(user=self.request.user)

    @extend_schema(responses=AuditComparisonOutput(many=True))
    def get(self, request):
        rows = selectors.audit_comparison_of(audits=self.filter_queryset(self.get_queryset()))
        return Response(AuditComparisonOutput(rows, many=True).data)
