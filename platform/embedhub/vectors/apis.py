from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from embedhub.core.errors import refusals_name
from embedhub.core.filters import VisibleObjectFilter
from embedhub.core.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictFloatField,
    StrictInputSerializer,
    StrictIntegerField,
    no_body_check,
)
from embedhub.jobs.selectors import corpus_visible
from embedhub.registry.selectors import model_version_resolve, model_version_visible
from embedhub.vectors import compensation, selectors, services
from embedhub.vectors.models import ServingPolicy, VectorIndex
from workers.ml.metrics import METRICS


class IndexOutput(serializers.ModelSerializer):
    is_active = serializers.SerializerMethodField()

    class Meta:
        model = VectorIndex
        fields = [
            "id",
            "corpus",
            "model_version",
            "state",
            "is_active",
            "storage",
            "dimension",
            "metric",
            "chunking",
            "chunk_window",
            "chunk_overlap",
            "hnsw_m",
            "hnsw_ef_construction",
            "encoder",
            "runtime",
            "quality",
            "vector_count",
            "created_at",
            "built_at",
            "retired_at",
        ]

    def get_is_active(self, index) -> bool:
        return index.corpus.active_index_id == index.pk


class IndexFilter(filters.FilterSet):
    corpus = VisibleObjectFilter(visible=corpus_visible)
    model_version = VisibleObjectFilter(visible=model_version_visible)

    class Meta:
        model = VectorIndex
        fields = ["corpus", "model_version", "state"]


class IndexListApi(ListAPIView):
    serializer_class = IndexOutput
    filterset_class = IndexFilter

    def get_queryset(self):
        return selectors.index_list(user=self.request.user)


class IndexDetailApi(APIView):
    @extend_schema(responses=IndexOutput)
    def get(self, request, index_id: int):
        return Response(IndexOutput(selectors.index_get(user=request.user, index_id=index_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, index_id: int):
        no_body_check(data=request.data)
        services.index_drop(index=selectors.index_get(user=request.user, index_id=index_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class IndexActivateApi(APIView):
    """Make this index the corpus's active one (also the rollback to a retired index)."""

    @extend_schema(request=None, responses=IndexOutput)
    def post(self, request, index_id: int):
        no_body_check(data=request.data)
        index = services.index_activate(
            index=selectors.index_get(user=request.user, index_id=index_id)
        )
        return Response(IndexOutput(index).data)


class SearchApi(APIView):
    throttle_scope = "search"

    class InputSerializer(StrictInputSerializer):
        corpus = StrictIntegerField(required=False, help_text="searches its active index")
        index = StrictIntegerField(required=False)
        query = StrictCharField(max_length=10000)
        k = StrictIntegerField(default=10, min_value=1, max_value=1000)
        exact = StrictBooleanField(default=False)
        ef_search = StrictIntegerField(required=False, min_value=1, max_value=1000)
        model_version = StrictIntegerField(required=False)
        compensation = StrictChoiceField(
            choices=compensation.COMPENSATIONS,
            required=False,
            help_text="default: the corpus's serving policy when searching a corpus (without "
            "model_version), else auto (QDC when the query version differs from the index's)",
        )

        def validate(self, attrs):
            if not attrs.get("corpus") and not attrs.get("index"):
                raise serializers.ValidationError("give either corpus or index")
            return attrs

    class OutputSerializer(serializers.Serializer):
        class HitSerializer(serializers.Serializer):
            document_id = serializers.IntegerField()
            external_id = serializers.CharField()
            title = serializers.CharField()
            score = serializers.FloatField()

        index = serializers.IntegerField()
        model_version = serializers.IntegerField()
        compensation = serializers.CharField()
        adapter = serializers.CharField(
            allow_null=True,
            help_text='with compensation "adapter": "corpus" (fitted for this corpus) or '
            '"version" (the chain of version adapters); null otherwise',
        )
        runtime = serializers.CharField(help_text="what encoded the query: the index's runtime")
        exact = serializers.BooleanField()
        policy = serializers.IntegerField(
            allow_null=True, help_text="the serving policy followed (null: none)"
        )
        note = serializers.CharField(
            allow_blank=True, help_text="why the corpus's stored serving policy was not followed"
        )
        results = HitSerializer(many=True)

    @staticmethod
    def _serving(*, user, params: dict) -> selectors.Serving:
        """What answers the search; a refusal names the field it is about, as a job's
        params' do (another account's id reads as a missing one: both are "not found")."""
        version = None
        if params.get("model_version"):
            with refusals_name("model_version"):
                version = model_version_resolve(user=user, version_id=params["model_version"])
        # The index searched is the one named, else the corpus's: its refusals (not found,
        # no active index, still building) name the field that chose it.
        with refusals_name("index" if params.get("index") else "corpus"):
            return selectors.serving_for_request(
                user=user,
                corpus_id=params.get("corpus"),
                index_id=params.get("index"),
                model_version=version,
                compensation=params.get("compensation"),
            )

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = data.validated_data
        serving = self._serving(user=request.user, params=params)
        index = serving.index
        # A query version the index cannot take is named by model_version when sent, else
        # by compensation (a corpus's own policy chose both: no field of the request).
        field = "model_version" if params.get("model_version") else None
        field = field or ("compensation" if params.get("compensation") else None)
        with refusals_name(field, codes=compensation.VERSION_REFUSALS):
            vectors, info = compensation.query_vectors(
                index=index,
                texts=[params["query"]],
                model_version=serving.model_version,
                compensation=serving.compensation,
            )
        hits = selectors.index_search(
            index=index,
            query_vectors=vectors,
            k=params["k"],
            exact=params["exact"],
            ef_search=params.get("ef_search"),
        )[0]
        policy = serving.policy.pk if serving.policy else None
        body = {
            "index": index.pk,
            **info,
            "exact": params["exact"],
            "policy": policy,
            "note": serving.note,
            "results": hits,
        }
        return Response(self.OutputSerializer(body).data)


class ServingPolicyApi(APIView):
    """A corpus's serving policy: what its queries use now, the numbers behind the last
    decision (written by policy jobs), and the settings policy jobs decide with."""

    class UpdateSerializer(StrictInputSerializer):
        metric = StrictChoiceField(choices=METRICS, required=False)
        tolerance = StrictFloatField(min_value=0.0, max_value=1.0, required=False)
        allow_reindex = StrictBooleanField(required=False)
        exclude_self = StrictBooleanField(
            required=False,
            help_text="the queries are documents of the corpus (ArguAna): drop a query's own "
            "document from its ranking in every evaluation that does not say otherwise",
        )

    class OutputSerializer(serializers.ModelSerializer):
        serving = serializers.SerializerMethodField()

        class Meta:
            model = ServingPolicy
            fields = [
                "corpus",
                "index",
                "query_version",
                "compensation",
                "metric",
                "tolerance",
                "allow_reindex",
                "exclude_self",
                "decision",
                "decided_by",
                "decided_at",
                "serving",
            ]

        def get_serving(self, policy) -> dict | None:
            """What a search of the corpus uses now (null: no active index yet)."""
            if policy.corpus.active_index_id is None:
                return None
            serving = selectors.serving_resolve(corpus=policy.corpus)
            return {
                "index": serving.index.pk,
                "model_version": serving.model_version.pk,
                "compensation": serving.compensation,
                "note": serving.note,
            }

    def _policy(self, request, corpus_id: int) -> ServingPolicy:
        corpus = selectors.corpus_for_user(user=request.user, corpus_id=corpus_id)
        return selectors.serving_policy_settings(corpus=corpus)

    @extend_schema(responses=OutputSerializer)
    def get(self, request, corpus_id: int):
        return Response(self.OutputSerializer(self._policy(request, corpus_id)).data)

    @extend_schema(request=UpdateSerializer, responses=OutputSerializer)
    def patch(self, request, corpus_id: int):
        corpus = selectors.corpus_for_user(user=request.user, corpus_id=corpus_id)
        # Partial: a setting not sent stays as it is. A form-encoded or multipart body (the
        # browsable API's form) would otherwise read every boolean not sent as false.
        data = self.UpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        policy = services.serving_policy_settings_update(corpus=corpus, **data.validated_data)
        return Response(self.OutputSerializer(policy).data)
