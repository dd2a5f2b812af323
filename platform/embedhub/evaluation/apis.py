from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from embedhub.core.errors import refusals_name
from embedhub.core.filters import VisibleObjectFilter
from embedhub.core.serializers import StrictInputSerializer
from embedhub.core.uploads import UploadLimit, upload_declared_check, upload_size_check
from embedhub.corpora.selectors import corpus_get
from embedhub.evaluation import selectors, services
from embedhub.evaluation.models import EvalRun, QuerySet
from embedhub.jobs.selectors import corpus_visible
from embedhub.registry.selectors import model_version_visible
from embedhub.vectors.selectors import index_list

QUERY_SET_LIMIT = UploadLimit(
    setting="EMBEDHUB_MAX_QUERY_SET_BYTES",
    advice="the queries and qrels files together must fit: split the query set into several",
)


class QuerySetOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    corpus = serializers.IntegerField(source="corpus_id")
    query_count = serializers.IntegerField()
    qrel_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class QuerySetFilter(filters.FilterSet):
    corpus = VisibleObjectFilter(visible=corpus_visible)

    class Meta:
        model = QuerySet
        fields = ["corpus"]


class QuerySetListCreateApi(ListAPIView):
    """List your query sets (?corpus=), or upload one: BEIR queries.jsonl + qrels TSV."""

    class InputSerializer(StrictInputSerializer):
        corpus = serializers.IntegerField()
        name = serializers.CharField(max_length=200)
        queries = serializers.FileField(help_text="BEIR queries.jsonl: {_id, text} per line")
        qrels = serializers.FileField(help_text="TSV: query-id, corpus-id, score (header ok)")
        skip_invalid = serializers.BooleanField(default=False)

    class ImportOutputSerializer(QuerySetOutput):
        skipped = serializers.ListField(child=serializers.DictField())
        skipped_total = serializers.IntegerField()

    serializer_class = QuerySetOutput
    # ?corpus= as every list filters by an id: another account's reads as a missing one.
    filterset_class = QuerySetFilter
    parser_classes = [MultiPartParser, FormParser]
    throttle_scope = "uploads"

    def get_throttles(self):
        return super().get_throttles() if self.request.method == "POST" else []

    def get_queryset(self):
        return selectors.query_set_list(user=self.request.user)

    @extend_schema(request=InputSerializer, responses={201: ImportOutputSerializer})
    def post(self, request):
        upload_declared_check(request=request, limit=QUERY_SET_LIMIT)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = data.validated_data
        upload_size_check(files=[params["queries"], params["qrels"]], limit=QUERY_SET_LIMIT)
        with refusals_name("corpus"):
            corpus = corpus_get(user=request.user, corpus_id=params["corpus"])
        replaced = corpus.query_sets.filter(name=params["name"].strip()).exists()
        query_set, report = services.query_set_create(
            owner=request.user,
            corpus=corpus,
            name=params["name"],
            queries_file=params["queries"],
            qrels_file=params["qrels"],
            skip_invalid=params["skip_invalid"],
        )
        query_set = selectors.query_set_get(user=request.user, query_set_id=query_set.pk)
        body = {
            **QuerySetOutput(query_set).data,
            "skipped": report.get("skipped", []),
            "skipped_total": report.get("skipped_total", 0),
        }
        code = status.HTTP_200_OK if replaced else status.HTTP_201_CREATED
        return Response(body, status=code)


class QuerySetDetailApi(APIView):
    @extend_schema(responses=QuerySetOutput)
    def get(self, request, query_set_id: int):
        query_set = selectors.query_set_get(user=request.user, query_set_id=query_set_id)
        return Response(QuerySetOutput(query_set).data)


class EvalRunOutput(serializers.ModelSerializer):
    model_version_label = serializers.CharField(source="model_version", read_only=True)
    query_set_name = serializers.CharField(source="query_set.name", read_only=True)

    class Meta:
        model = EvalRun
        fields = [
            "id",
            "job",
            "query_set",
            "query_set_name",
            "index",
            "model_version",
            "model_version_label",
            "compensation",
            "mode",
            "metrics",
            "n_queries",
            "ann_recall_at_10",
            "ann_recall_at_k",
            "seconds",
            "timings",
            "params",
            "created_at",
        ]


class EvalRunFilter(filters.FilterSet):
    query_set = VisibleObjectFilter(visible=selectors.query_set_list)
    index = VisibleObjectFilter(visible=index_list)
    model_version = VisibleObjectFilter(visible=model_version_visible)

    class Meta:
        model = EvalRun
        fields = ["query_set", "index", "model_version", "compensation", "mode"]


class EvalRunListApi(ListAPIView):
    """Evaluation runs, newest first; filter by query_set, index, model_version, compensation."""

    serializer_class = EvalRunOutput
    filterset_class = EvalRunFilter

    def get_queryset(self):
        return selectors.eval_run_list(user=self.request.user)


class EvalRunDetailApi(APIView):
    class OutputSerializer(EvalRunOutput):
        class Meta(EvalRunOutput.Meta):
            fields = [*EvalRunOutput.Meta.fields, "per_query"]

    @extend_schema(
        parameters=[OpenApiParameter("per_query", bool, description="include per-query metrics")],
        responses=OutputSerializer,
    )
    def get(self, request, eval_run_id: int):
        with_per_query = request.query_params.get("per_query") in ("1", "true", "yes")
        run = selectors.eval_run_get(
            user=request.user, eval_run_id=eval_run_id, with_per_query=with_per_query
        )
        if with_per_query:
            return Response(self.OutputSerializer(run).data)
        return Response(EvalRunOutput(run).data)
