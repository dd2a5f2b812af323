from django.db import models

from embedhub.core.models import BaseModel


class GateResult(BaseModel):
    """The latest verdict of a reindex gate for one (version, corpus, query set).

    A gate says how a version did on one tenant's corpus and judgements, so it never
    speaks for the version elsewhere: the next gated reindex of the same triple replaces
    it; the reindex job's result keeps each verdict as it was.
    """

    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.CASCADE, related_name="gate_results"
    )
    corpus = models.ForeignKey(
        "corpora.Corpus", on_delete=models.CASCADE, related_name="gate_results"
    )
    query_set = models.ForeignKey(
        "evaluation.QuerySet", on_delete=models.CASCADE, related_name="gate_results"
    )
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    new_eval_run = models.ForeignKey(
        "evaluation.EvalRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    active_eval_run = models.ForeignKey(
        "evaluation.EvalRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    metric = models.CharField(max_length=32)
    new_value = models.FloatField()
    active_value = models.FloatField()
    tolerance = models.FloatField()
    passed = models.BooleanField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model_version", "corpus", "query_set"], name="gateresult_triple"
            )
        ]
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "failed"
        return f"gate {verdict}: version {self.model_version_id} on corpus {self.corpus_id}"
