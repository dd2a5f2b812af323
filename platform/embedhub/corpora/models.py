from django.conf import settings
from django.db import models

from embedhub.core.models import BaseModel


class Corpus(BaseModel):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="corpora"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    # Search uses this index unless a request names another; swapped atomically by reindex.
    active_index = models.ForeignKey(
        "vectors.VectorIndex", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Adversarial-passage screening at ingest (off by default): new documents whose combined
    # detector score is above the threshold calibrated at this false-positive rate are
    # stored quarantined. See corpora/screening.py.
    screening_enabled = models.BooleanField(default=False)
    screening_fpr = models.FloatField(default=0.01)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="corpus_owner_name")]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class Document(models.Model):
    corpus = models.ForeignKey(Corpus, on_delete=models.CASCADE, related_name="documents")
    external_id = models.CharField(max_length=512)
    title = models.TextField(blank=True, default="")
    text = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)
    # sha256 of title + text: re-uploads compare hashes, and indexes remember the hash they embedded.
    content_hash = models.CharField(max_length=64)
    # Held back by the ingest screen: stored, listed for approval, but out of search and
    # evaluation. db_default because the import inserts rows in raw SQL.
    quarantined = models.BooleanField(default=False, db_default=False)
    screen_score = models.FloatField(null=True, blank=True)
    screen_features = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["corpus", "external_id"], name="document_corpus_external_id"
            )
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return self.external_id


class CorpusScreen(BaseModel):
    """The calibrated detector of one corpus (workers.ml.detectors.Screen, serialised),
    fitted from its non-quarantined documents."""

    corpus = models.OneToOneField(Corpus, on_delete=models.CASCADE, related_name="screen")
    data = models.BinaryField()
    fpr = models.FloatField()
    threshold = models.FloatField()
    features = models.JSONField(default=list)
    n_documents = models.IntegerField()  # the corpus's clean documents when it was fitted
    heldout_fpr = models.FloatField(null=True, blank=True)

    def __str__(self) -> str:
        return f"screen of corpus {self.corpus_id} at fpr {self.fpr}"


class QuarantineDecision(models.Model):
    """What an owner decided about a quarantined document; a rejected one is deleted, so
    this row is what remains of it."""

    class Decision(models.TextChoices):
        APPROVED = "approved"
        REJECTED = "rejected"

    corpus = models.ForeignKey(Corpus, on_delete=models.CASCADE, related_name="quarantine_log")
    external_id = models.CharField(max_length=512)
    decision = models.CharField(max_length=16, choices=Decision.choices)
    score = models.FloatField(null=True, blank=True)
    excerpt = models.TextField(blank=True, default="")
    # The text decided on (the document's content_hash then): an approval holds for that
    # text only, so a later metadata-only re-upload keeps it and a text change does not.
    content_hash = models.CharField(max_length=64, blank=True, default="")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-decided_at", "-id"]

    def __str__(self) -> str:
        return f"{self.decision} {self.external_id}"
