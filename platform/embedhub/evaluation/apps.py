from django.apps import AppConfig


class EvaluationConfig(AppConfig):
    name = "embedhub.evaluation"
    label = "evaluation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A BEIR zip uploaded to a corpus brings its query sets with it; corpora calls this
        # importer through its registry because it may not import evaluation (layering).
        # Imported here because apps.py is loaded before models are.
        from embedhub.corpora.archives import query_set_importer_register
        from embedhub.evaluation.importing import query_set_import
        from embedhub.evaluation.selectors import corpus_judged_queries
        from embedhub.vectors.quality import judged_queries_provider_register

        query_set_importer_register(query_set_import)
        # The int8 quality gate of vectors measures nDCG@10 on the corpus's query set; the
        # same registry pattern, since vectors sits below evaluation.
        judged_queries_provider_register(corpus_judged_queries)
