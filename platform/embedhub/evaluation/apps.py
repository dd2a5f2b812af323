from django.apps import AppConfig


class EvaluationConfig(AppConfig):
    name = "embedhub.evaluation"
    label = "evaluation"
    default_auto_field = "django.db.models.BigAutoField"
