from django.conf import settings
from django.db import models

from embedhub.core.models import BaseModel


class VectorIndex(BaseModel):
    """Vectors of one corpus by one model version, in a pgvector table of its own."""

    class State(models.TextChoices):
        BUILDING = "building"
        READY = "ready"
        FAILED = "failed"
        RETIRED = "retired"  # replaced by a reindex, kept for rollback until retention ends
        DROPPED = "dropped"  # table dropped after retention

    class Storage(models.TextChoices):
        VECTOR = "vector"
        HALFVEC = "halfvec"

    class Chunking(models.TextChoices):
        TRUNCATE = "truncate"
        CHUNK = "chunk"

    class Runtime(models.TextChoices):
        # The values of workers.ml.runtimes.RUNTIMES.
        TORCH = "torch"
        ONNX = "onnx"
        ONNX_INT8 = "onnx-int8"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="indexes"
    )
    corpus = models.ForeignKey("corpora.Corpus", on_delete=models.CASCADE, related_name="indexes")
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, related_name="indexes"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.BUILDING)
    table_name = models.CharField(max_length=63, unique=True, null=True, blank=True)
    metric = models.CharField(max_length=16, default="cosine")
    storage = models.CharField(max_length=16, choices=Storage.choices, default=Storage.VECTOR)
    dimension = models.PositiveIntegerField()
    chunking = models.CharField(max_length=16, choices=Chunking.choices, default=Chunking.TRUNCATE)
    chunk_window = models.PositiveIntegerField(default=256)
    chunk_overlap = models.PositiveIntegerField(default=32)
    hnsw_m = models.PositiveIntegerField(default=16)
    hnsw_ef_construction = models.PositiveIntegerField(default=64)
    encoder = models.CharField(
        max_length=64, blank=True, default="", help_text='"" = the model version; "fake:d" in tests'
    )
    # What computes the vectors of the documents and of the queries searched against them.
    runtime = models.CharField(max_length=16, choices=Runtime.choices, default=Runtime.TORCH)
    # An int8 runtime's measured loss against fp32 (cosine, nDCG@10 delta): the quality gate.
    quality = models.JSONField(default=dict, blank=True)
    vector_count = models.PositiveIntegerField(default=0)
    built_at = models.DateTimeField(null=True, blank=True)
    # Written by the worker that built the HNSW index, read by /metrics in the web process.
    hnsw_build_seconds = models.FloatField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"index {self.pk} ({self.corpus} × {self.model_version})"


class ServingPolicy(BaseModel):
    """How a corpus answers queries: which index, which query-encoder version, which
    compensation. No row (or empty fields) is the default: the active index, its own
    version, no compensation. A `policy` job (continual app) measures the candidates and
    writes the winner here with the numbers behind it (`decision`); search and evaluation
    read it unless a request names the index, version or compensation itself."""

    class Compensation(models.TextChoices):
        NONE = "none"
        QDC = "qdc"
        ADAPTER = "adapter"

    corpus = models.OneToOneField(
        "corpora.Corpus", on_delete=models.CASCADE, related_name="serving_policy"
    )
    # None: the corpus's active index, whichever it is.
    index = models.ForeignKey(
        VectorIndex, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # None: the index's own version.
    query_version = models.ForeignKey(
        "registry.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="serving_policies",
    )
    compensation = models.CharField(
        max_length=16, choices=Compensation.choices, default=Compensation.NONE
    )
    # The corpus's settings for the policy job.
    metric = models.CharField(max_length=32, default="ndcg@10")
    tolerance = models.FloatField(default=0.01)
    # A reindex candidate re-embeds the whole corpus: off means "never spend that here".
    allow_reindex = models.BooleanField(default=True)
    # The corpus's queries are documents of it (ArguAna: a query is an argument, judged
    # against its counter-arguments), so a query's own document never counts as a hit.
    # Every evaluation of the corpus that does not say otherwise follows it: the evaluate
    # job's default, the policy job's candidates and the reindex gate.
    exclude_self = models.BooleanField(default=False)
    # The last decision: candidates (EvalRun ids, metric values, skipped ones and why),
    # the chosen one and the reason, as the policy job recorded them.
    decision = models.JSONField(default=dict, blank=True)
    decided_by = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "serving policies"

    def __str__(self) -> str:
        return f"serving policy of corpus {self.corpus_id}"
