from django.conf import settings
from django.db import models

from embedhub.core.models import BaseModel


class Job(BaseModel):
    """Postgres is the truth about a job; the broker only carries "job N is ready"."""

    class Kind(models.TextChoices):
        INGEST = "ingest"
        EMBED = "embed"
        EVALUATE = "evaluate"
        FINETUNE = "finetune"
        REINDEX = "reindex"
        AUDIT = "audit"
        POLICY = "policy"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    queue = models.CharField(max_length=16, default="cpu")
    corpus = models.ForeignKey(
        "corpora.Corpus", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    # A shard of a sharded job: a job of its own (claim, heartbeat, checkpoint, crash
    # policy), over a slice of its parent's work; the parent sums their progress.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="shards"
    )
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(null=True, blank=True)
    progress_unit = models.CharField(max_length=32, default="items")
    rate = models.FloatField(null=True, blank=True, help_text="units per second")
    eta_seconds = models.FloatField(null=True, blank=True)
    progress_note = models.CharField(max_length=300, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0, help_text="claims so far, retries included")
    # Consecutive attempts lost (worker gone) without progress; an attempt that progressed
    # resets it. The job fails for a lost worker only when this reaches MAX_STALLED_ATTEMPTS.
    stalled_attempts = models.PositiveIntegerField(default=0)
    progressed_at = models.DateTimeField(null=True, blank=True)
    # Minted by every claim: only the holder of the current token may write to the job, so a
    # frozen worker from an earlier attempt can never pass as the owner again.
    claim_token = models.UUIDField(null=True, blank=True)
    # The claimant's Postgres session, so the reaper can end it (and the locks it holds).
    claim_backend_pid = models.IntegerField(null=True, blank=True)
    claim_backend_start = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    error = models.TextField(blank=True, default="", help_text="what went wrong, for the owner")
    error_detail = models.TextField(blank=True, default="", help_text="traceback, staff only")
    result = models.JSONField(default=dict, blank=True)
    checkpoint = models.JSONField(default=dict, blank=True)
    cancel_requested = models.BooleanField(default=False)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    # sha256 of the request the key came with (jobs/idempotency.py): the same key with
    # another request is refused. Blank: submitted before it was stored, or without one.
    idempotency_fingerprint = models.CharField(max_length=64, blank=True, default="")
    dispatched_at = models.DateTimeField(null=True, blank=True)
    dispatch_count = models.PositiveIntegerField(default=0, help_text="messages sent so far")
    # Not sent again before this: re-dispatch backs off exponentially.
    next_dispatch_at = models.DateTimeField(null=True, blank=True)
    waiting_reason = models.CharField(max_length=300, blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"], name="job_owner_idempotency_key"
            )
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"job {self.pk} {self.kind} {self.status}"

    @property
    def percent(self) -> float | None:
        if not self.progress_total:
            return 100.0 if self.status == self.Status.SUCCEEDED else None
        return min(100.0, 100.0 * self.progress_done / self.progress_total)


class JobEvent(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=32)
    message = models.TextField(blank=True, default="")
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} ({self.job_id})"
