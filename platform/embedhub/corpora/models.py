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
