from django.conf import settings
from django.db import models

from embedhub.core.models import BaseModel


class QuerySet(BaseModel):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="query_sets"
    )
    corpus = models.ForeignKey(
        "corpora.Corpus", on_delete=models.CASCADE, related_name="query_sets"
    )
    name = models.CharField(max_length=200)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["corpus", "name"], name="queryset_corpus_name")
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class Query(models.Model):
    query_set = models.ForeignKey(QuerySet, on_delete=models.CASCADE, related_name="queries")
    external_id = models.CharField(max_length=512)
    text = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["query_set", "external_id"], name="query_set_external_id"
            )
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return self.external_id


class Qrel(models.Model):
    query_set = models.ForeignKey(QuerySet, on_delete=models.CASCADE, related_name="qrels")
    query_external_id = models.CharField(max_length=512)
    document_external_id = models.CharField(max_length=512)
    relevance = models.IntegerField(default=1)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["query_set", "query_external_id", "document_external_id"],
                name="qrel_unique",
            )
        ]

    def __str__(self) -> str:
        return f"{self.query_external_id} -> {self.document_external_id} ({self.relevance})"


class EvalRun(BaseModel):
    class Mode(models.TextChoices):
        EXACT = "exact"
        ANN = "ann"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="eval_runs"
    )
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    query_set = models.ForeignKey(QuerySet, on_delete=models.CASCADE, related_name="eval_runs")
    index = models.ForeignKey(
        "vectors.VectorIndex", on_delete=models.CASCADE, related_name="eval_runs"
    )
    # The version that encodes the queries; differs from the index's when testing drift / QDC.
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.CASCADE, related_name="eval_runs"
    )
    compensation = models.CharField(max_length=16, default="none")
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.EXACT)
    metrics = models.JSONField(default=dict)
    per_query = models.JSONField(default=dict)
    # ANN runs only: the share of the exact top 10 (top k, k in params) that ANN's held.
    ann_recall_at_10 = models.FloatField(null=True, blank=True)
    ann_recall_at_k = models.FloatField(null=True, blank=True)
    n_queries = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(default=0)
    # Seconds per phase (load, encode, search, reference, metrics): where the time went.
    timings = models.JSONField(default=dict, blank=True)
    # What else shaped the numbers (k, ef_search, exclude_self, requested compensation,
    # queries skipped for lack of judgements), so two runs can be compared honestly.
    params = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
