from django.apps import AppConfig


class VectorsConfig(AppConfig):
    name = "embedhub.vectors"
    label = "vectors"
    default_auto_field = "django.db.models.BigAutoField"
