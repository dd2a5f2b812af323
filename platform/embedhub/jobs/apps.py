from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class JobsConfig(AppConfig):
    name = "embedhub.jobs"
    label = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Every process (web, worker, beat, manage.py) refuses to start with a half-declared
        # job kind, instead of failing on the kind's first submission. Imported here because
        # apps.py is loaded before models are (Django's app-loading order, not a cycle).
        from embedhub.jobs.kinds import job_kinds_check, job_kinds_discover

        job_kinds_discover()
        problems = job_kinds_check()
        if problems:
            raise ImproperlyConfigured("job kinds: " + "; ".join(problems))
