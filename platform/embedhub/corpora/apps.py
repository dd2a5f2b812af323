from django.apps import AppConfig


class CorporaConfig(AppConfig):
    name = "embedhub.corpora"
    label = "corpora"
    default_auto_field = "django.db.models.BigAutoField"
