"""Upload a fine-tuning training set (JSONL of {"query", "positive", "negatives"?})."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from embedhub.core.serializers import StrictInputSerializer
from embedhub.core.uploads import UploadLimit, upload_declared_check, upload_size_check
from embedhub.registry.training_sets import training_set_store

TRAINING_SET_LIMIT = UploadLimit(
    setting="EMBEDHUB_MAX_TRAINING_SET_BYTES",
    advice="train on a sample of the pairs, or ask an admin to raise the limit",
)


class TrainingSetUploadApi(APIView):
    """Validated line by line (errors name the line); pass the returned `training_set` to a
    finetune job: POST /api/v1/jobs/ {"kind": "finetune", "params": {"parent": <version id>,
    "training_set": "<sha256>", "corpus": <id, to mine hard negatives>}}."""

    parser_classes = [MultiPartParser, FormParser]
    throttle_scope = "uploads"

    class InputSerializer(StrictInputSerializer):
        file = serializers.FileField()

    class OutputSerializer(serializers.Serializer):
        training_set = serializers.CharField(source="sha256")
        pairs = serializers.IntegerField()
        queries = serializers.IntegerField()
        with_negatives = serializers.IntegerField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request):
        upload_declared_check(request=request, limit=TRAINING_SET_LIMIT)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload_size_check(files=[data.validated_data["file"]], limit=TRAINING_SET_LIMIT)
        stored = training_set_store(user=request.user, upload=data.validated_data["file"])
        return Response(self.OutputSerializer(stored).data, status=status.HTTP_201_CREATED)
