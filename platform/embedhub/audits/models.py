from django.conf import settings
from django.db import models

from embedhub.core.models import BaseModel


class RobustnessAudit(BaseModel):
    """A GASLITE attack on one index for one concept. Adversarial passages live only here."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="audits")
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    index = models.ForeignKey("vectors.VectorIndex", on_delete=models.CASCADE, related_name="audits")
    model_version = models.ForeignKey("registry.ModelVersion", on_delete=models.CASCADE, related_name="audits")
    concept = models.CharField(max_length=200)
    message = models.TextField()
    params = models.JSONField(default=dict)
    held_in = models.JSONField(default=list)
    held_out = models.JSONField(default=list)
    passages = models.JSONField(default=list)
    results = models.JSONField(default=dict)
    geometry = models.JSONField(default=dict)
    seconds = models.FloatField(default=0)

    class Meta:
        ordering = ["-created_at"]
