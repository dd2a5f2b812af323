from django.core.management.base import BaseCommand, CommandError

from embedhub.core.errors import ApplicationError
from embedhub.registry.services import model_version_register


class Command(BaseCommand):
    help = (
        "Register an embedding model version from a local directory or a Hugging Face Hub id. "
        "With no source, registers the bundled all-MiniLM-L6-v2 (idempotent)."
    )

    def add_arguments(self, parser):
        parser.add_argument("source", nargs="?", default=None, help="model directory or Hub id")
        parser.add_argument("--name", default=None, help="model name (default: from the source)")

    def handle(self, *args, source=None, name=None, **options):
        try:
            version = model_version_register(source=source, name=name)
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            f"{version} (id {version.pk}): dimension {version.dimension}, pooling "
            f"{version.pooling}, normalize {version.normalize}, max tokens {version.max_tokens}, "
            f"from {version.source}"
        )
