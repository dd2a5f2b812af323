from django.conf import settings
from django.db import models

from embedhub.core.models import BaseModel


class RobustnessAudit(BaseModel):
    """A GASLITE attack on one index for one concept. Adversarial passages live only here:
    they are evaluated against the index's vectors in memory and never written to it."""

    class State(models.TextChoices):
        ATTACKING = "attacking"
        EVALUATING = "evaluating"
        COMPLETE = "complete"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="audits"
    )
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    index = models.ForeignKey(
        "vectors.VectorIndex", on_delete=models.CASCADE, related_name="audits"
    )
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.CASCADE, related_name="audits"
    )
    # Where the concept's queries came from (null when they were uploaded inline).
    query_set = models.ForeignKey(
        "evaluation.QuerySet", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.ATTACKING)
    concept = models.CharField(max_length=200)
    message = models.TextField()
    params = models.JSONField(default=dict)
    # Lists of {"id", "text"}: what the attacker knew and what it is judged on.
    held_in = models.JSONField(default=list)
    held_out = models.JSONField(default=list)
    # The k-means centroids attacked (one per passage), fixed on the first attempt so a
    # resumed job attacks the same targets.
    targets = models.JSONField(default=list)
    passages = models.JSONField(default=list)
    results = models.JSONField(default=dict)
    geometry = models.JSONField(default=dict)
    timings = models.JSONField(default=dict)
    seconds = models.FloatField(default=0)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One audit per job: a retried job finds and continues its own row.
            models.UniqueConstraint(fields=["job"], name="audit_one_per_job")
        ]

    def __str__(self) -> str:
        return f"audit {self.pk} ({self.concept} on index {self.index_id})"
