from django.contrib import admin

from embedhub.corpora.models import Corpus, Document


@admin.register(Corpus)
class CorpusAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "owner", "active_index", "created_at"]
    search_fields = ["name"]


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["id", "corpus", "external_id", "title"]
    search_fields = ["external_id", "title"]
    list_filter = ["corpus"]
