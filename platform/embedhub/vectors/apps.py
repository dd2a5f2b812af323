from django.apps import AppConfig
from django.db.models.signals import post_delete


class VectorsConfig(AppConfig):
    name = "embedhub.vectors"
    label = "vectors"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here because apps.py is loaded before models are.
        from embedhub.vectors.models import VectorIndex
        from embedhub.vectors.tables import index_table_drop_on_delete

        # An index row can go with its corpus (a cascade the vectors app does not run), and
        # its table must go with it: the ORM knows nothing of per-index tables.
        post_delete.connect(
            index_table_drop_on_delete, sender=VectorIndex, dispatch_uid="index-table-drop"
        )
