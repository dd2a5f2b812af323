"""manage.py services start|stop|status — the embedded Postgres and Redis under var/."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from embedhub.core import embedded


class Command(BaseCommand):
    help = "Start, stop or show the embedded PostgreSQL (+pgvector) and Redis under var/."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["start", "stop", "status"])

    def handle(self, *args, action: str, **options):
        var_dir = settings.VAR_DIR
        if not any(embedded.wanted().values()):
            self.stdout.write(
                "DATABASE_URL and CELERY_BROKER_URL are set: nothing embedded to manage."
            )
            return
        try:
            if action == "start":
                statuses = embedded.services_start(var_dir)
            elif action == "stop":
                embedded.services_stop(var_dir)
                statuses = embedded.services_status(var_dir)
            else:
                statuses = embedded.services_status(var_dir)
        except embedded.ServiceError as exc:
            raise CommandError(str(exc)) from exc
        for status in statuses:
            state = f"running (pid {status.pid})" if status.running else "stopped"
            self.stdout.write(f"{status.name:9} {state:22} {status.url}  [{status.detail}]")
