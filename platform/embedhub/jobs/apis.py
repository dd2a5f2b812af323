from django.urls import reverse
from django_filters import rest_framework as filters
from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from embedhub.core.filters import VisibleObjectFilter
from embedhub.core.parsers import JSONParser
from embedhub.core.serializers import StrictChoiceField, StrictInputSerializer, no_body_check
from embedhub.core.server_paths import ServerPathsHidden
from embedhub.jobs import selectors, services
from embedhub.jobs.idempotency import HEADER as IDEMPOTENCY_HEADER
from embedhub.jobs.kinds import JobKind, job_kinds
from embedhub.jobs.models import Job, JobEvent
from embedhub.jobs.params import params_error
from embedhub.jobs.submission import job_submit_checked


class ShardOutput(ServerPathsHidden, serializers.ModelSerializer):
    server_path_fields = ("error",)
    percent = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "status",
            "progress_done",
            "progress_total",
            "percent",
            "attempts",
            "worker",
            "heartbeat_at",
            "error",
        ]


class JobOutput(ServerPathsHidden, serializers.ModelSerializer):
    # Params and results name stored files (a training set, a fine-tune's weights) and an
    # error may quote one: only staff see server paths. Workers read the rows, not this.
    server_path_fields = ("params", "result", "error")
    percent = serializers.FloatField(read_only=True, allow_null=True)
    corpus = serializers.PrimaryKeyRelatedField(read_only=True)
    parent = serializers.PrimaryKeyRelatedField(
        read_only=True, help_text="the sharded job this one is a shard of (null otherwise)"
    )
    shards = serializers.SerializerMethodField(
        help_text="a sharded job's shard jobs in order (document-id ranges run by any "
        "worker); the job's progress is their sum"
    )
    error_detail = serializers.SerializerMethodField(
        help_text="the traceback of an unexpected failure: staff only (null for others)"
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "status",
            "queue",
            "params",
            "corpus",
            "parent",
            "shards",
            "progress_done",
            "progress_total",
            "progress_unit",
            "percent",
            "rate",
            "eta_seconds",
            "progress_note",
            "attempts",
            "stalled_attempts",
            "waiting_reason",
            "heartbeat_at",
            "worker",
            "error",
            "error_detail",
            "result",
            "cancel_requested",
            "created_at",
            "started_at",
            "finished_at",
        ]

    @extend_schema_field(ShardOutput(many=True))
    def get_shards(self, job: Job) -> list:
        shards = sorted(job.shards.all(), key=lambda shard: shard.pk)
        return ShardOutput(shards, many=True, context=self.context).data

    def get_error_detail(self, job: Job) -> str | None:
        request = self.context.get("request")
        return job.error_detail if request and request.user.is_staff else None


class JobEventOutput(ServerPathsHidden, serializers.ModelSerializer):
    server_path_fields = ("message", "data")  # a failure's message, a success's result

    class Meta:
        model = JobEvent
        fields = ["id", "created_at", "kind", "message", "data"]


class JobFilter(filters.FilterSet):
    corpus = VisibleObjectFilter(visible=selectors.corpus_visible)
    parent = VisibleObjectFilter(visible=selectors.job_list)

    class Meta:
        model = Job
        fields = ["kind", "status", "corpus", "parent"]


def _submission_schema(kind: JobKind) -> type[serializers.Serializer]:
    """The request body for one kind, for OpenAPI only: {"kind": <name>, "params": {...}}."""
    fields = {
        "kind": serializers.ChoiceField(choices=[kind.name], help_text=kind.description),
        "params": kind.params(help_text=f"the params of the {kind.name} job"),
    }
    name = f"{kind.name.title()}JobSubmission"
    return type(name, (serializers.Serializer,), {**fields, "__doc__": kind.description})


# One body per kind, told apart by "kind": Swagger shows each kind's params with their
# descriptions, defaults and bounds, and schemathesis fuzzes inside them.
JOB_SUBMISSION = PolymorphicProxySerializer(
    component_name="JobSubmission",
    serializers={kind.name: _submission_schema(kind) for kind in job_kinds()},
    resource_type_field_name="kind",
)


class JobListCreateApi(ListAPIView):
    """List your jobs, or submit one (202 + Location). An Idempotency-Key (at most 200
    characters) makes a retry answer 200 with the job of its first request; the same key on
    a different request is a 422."""

    class InputSerializer(StrictInputSerializer):
        kind = StrictChoiceField(choices=Job.Kind.choices)
        # Any JSON value: the kind's params serializer refuses one that is not an object.
        params = serializers.JSONField(default=dict, allow_null=True)

    serializer_class = JobOutput
    filterset_class = JobFilter
    throttle_scope = "jobs"
    # JSON only: params nest, which a form or multipart body cannot carry (its "params"
    # field would be read as absent), so such a body is a 415, and OpenAPI says so.
    parser_classes = [JSONParser]

    def get_throttles(self):
        return super().get_throttles() if self.request.method == "POST" else []

    def get_queryset(self):
        # Shards are listed under their job (and with ?parent=<id>), not beside it.
        jobs = selectors.job_list(user=self.request.user).prefetch_related("shards")
        return jobs if "parent" in self.request.query_params else jobs.filter(parent__isnull=True)

    @extend_schema(
        request=JOB_SUBMISSION,
        responses={200: JobOutput, 202: JobOutput},
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                str,
                OpenApiParameter.HEADER,
                description="at most 200 printable characters, per user: a retry of the same "
                "request answers 200 with the job its first request made; the key on a "
                "different request (kind, params or endpoint) is a 422",
            )
        ],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        if not data.is_valid():
            raise params_error(data.errors, prefix="")
        job, created = job_submit_checked(
            user=request.user,
            kind=data.validated_data["kind"],
            params=data.validated_data["params"],
            idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
        )
        url = reverse("job-detail", args=[job.pk])
        code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        return Response(
            JobOutput(job, context={"request": request}).data,
            status=code,
            headers={"Location": url},
        )


class JobDetailApi(APIView):
    @extend_schema(responses=JobOutput)
    def get(self, request, job_id: int):
        return Response(
            JobOutput(
                selectors.job_get(user=request.user, job_id=job_id), context={"request": request}
            ).data
        )


class JobEventsApi(ListAPIView):
    serializer_class = JobEventOutput

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no job
            return JobEvent.objects.none()
        job = selectors.job_get(user=self.request.user, job_id=self.kwargs["job_id"])
        return job.events.all()


class JobCancelApi(APIView):
    @extend_schema(request=None, responses=JobOutput)
    def post(self, request, job_id: int):
        no_body_check(data=request.data)
        job = services.job_cancel(job=selectors.job_get(user=request.user, job_id=job_id))
        return Response(JobOutput(job, context={"request": request}).data)


class JobRetryApi(APIView):
    @extend_schema(request=None, responses={202: JobOutput})
    def post(self, request, job_id: int):
        no_body_check(data=request.data)
        job = services.job_retry(job=selectors.job_get(user=request.user, job_id=job_id))
        return Response(
            JobOutput(job, context={"request": request}).data, status=status.HTTP_202_ACCEPTED
        )
