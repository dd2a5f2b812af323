from django.apps import AppConfig


class ContinualConfig(AppConfig):
    """Continual learning: fine-tuning new model versions and moving corpora onto them.

    It sits above registry, vectors and evaluation (it trains on query sets, mines the
    parent's index and gates a reindex on an evaluation), so none of those import it.
    """

    name = "embedhub.continual"
    label = "continual"
    default_auto_field = "django.db.models.BigAutoField"
