"""Settings read from the environment (cookiecutter-django style).

With DATABASE_URL / CELERY_BROKER_URL unset, the embedded Postgres and Redis under var/
are used (started by `manage.py services start`, `make demo` or the test suite).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from embedhub.core import embedded

BASE_DIR = Path(__file__).resolve().parents[3]


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
_INSECURE_DEV_KEY = "django-insecure-embedhub-dev-only"
SECRET_KEY = os.environ.get("SECRET_KEY") or (_INSECURE_DEV_KEY if DEBUG else "")
if not SECRET_KEY:
    # Production must never run with a key that is in the source code.
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "django_celery_beat",
    "embedhub.core",
    "embedhub.corpora",
    "embedhub.registry",
    "embedhub.vectors",
    "embedhub.jobs",
    "embedhub.evaluation",
    "embedhub.continual",
    "embedhub.audits",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before anything looks at the URL (static files, slash redirects, views).
    "embedhub.core.middleware.NulCharacterMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "embedhub.urls"
WSGI_APPLICATION = "embedhub.wsgi.application"
ASGI_APPLICATION = "embedhub.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

VAR_DIR = Path(os.environ.get("EMBEDHUB_VAR_DIR", BASE_DIR / "var"))
if env_bool("EMBEDHUB_AUTOSTART", True):
    # Only services whose URL is unset are started; cheap (a pid check) once they run.
    embedded.ensure_started(VAR_DIR)
DATABASE_URL = os.environ.get("DATABASE_URL") or embedded.postgres_url(VAR_DIR)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
if os.environ.get("EMBEDHUB_DB_NAME"):
    # The test suite's Celery worker must use the test database pytest-django created.
    DATABASES["default"]["NAME"] = os.environ["EMBEDHUB_DB_NAME"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "media/"
# Uploads stream to disk, never into memory; the hard cap gives a clear 413.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
EMBEDHUB_MAX_UPLOAD_BYTES = int(os.environ.get("EMBEDHUB_MAX_UPLOAD_BYTES", 2 * 1024**3))
# Training sets and query sets are read whole at submission, so their caps are lower.
EMBEDHUB_MAX_TRAINING_SET_BYTES = int(
    os.environ.get("EMBEDHUB_MAX_TRAINING_SET_BYTES", 256 * 1024**2)
)
EMBEDHUB_MAX_QUERY_SET_BYTES = int(os.environ.get("EMBEDHUB_MAX_QUERY_SET_BYTES", 256 * 1024**2))
ARTIFACT_ROOT = Path(os.environ.get("ARTIFACT_ROOT", VAR_DIR / "artifacts"))

SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's defaults, with a JSON parser that refuses a body nested too deep (a 400).
    "DEFAULT_PARSER_CLASSES": [
        "embedhub.core.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "embedhub.core.pagination.DefaultPagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "embedhub.core.schema.EmbedHubAutoSchema",
    "EXCEPTION_HANDLER": "embedhub.core.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "uploads": os.environ.get("THROTTLE_UPLOADS", "60/hour"),
        "jobs": os.environ.get("THROTTLE_JOBS", "600/hour"),
        "search": os.environ.get("THROTTLE_SEARCH", "120/minute"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "EmbedHub API",
    "DESCRIPTION": "Corpora, model versions, vector indexes, jobs, evaluation, search, audits.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "embedhub.core.schema.params_closed",
    ],
}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or embedded.redis_url(VAR_DIR)
CELERY_RESULT_BACKEND = None  # Postgres holds job state; the broker only carries job ids.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Unacked messages come back after this long if a worker vanished; the reaper is faster.
    "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", 3600)),
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

EMBEDHUB = {
    # A running job whose heartbeat is older than this is presumed dead and re-queued.
    "HEARTBEAT_SECONDS": float(os.environ.get("EMBEDHUB_HEARTBEAT_SECONDS", 5)),
    "STALE_AFTER_SECONDS": float(os.environ.get("EMBEDHUB_STALE_AFTER_SECONDS", 60)),
    "REAPER_INTERVAL_SECONDS": float(os.environ.get("EMBEDHUB_REAPER_INTERVAL_SECONDS", 30)),
    # A queued job not picked up for this long is dispatched again (lost message, broker restart).
    "REDISPATCH_AFTER_SECONDS": float(os.environ.get("EMBEDHUB_REDISPATCH_AFTER_SECONDS", 120)),
    # A job fails for a lost worker only after this many attempts in a row without progress.
    "MAX_STALLED_ATTEMPTS": int(os.environ.get("EMBEDHUB_MAX_STALLED_ATTEMPTS", 3)),
    # A stalled attempt's job waits this long × 2^(stalled attempts - 1) before it is sent
    # again; any wait (and the lost-message re-dispatch, REDISPATCH_AFTER × 2^sends) is capped.
    "REQUEUE_BACKOFF_SECONDS": float(os.environ.get("EMBEDHUB_REQUEUE_BACKOFF_SECONDS", 30)),
    "BACKOFF_MAX_SECONDS": float(os.environ.get("EMBEDHUB_BACKOFF_MAX_SECONDS", 3600)),
    # Jobs of one user running at once (0: no limit); further ones wait in "queued".
    "MAX_RUNNING_PER_USER": int(os.environ.get("EMBEDHUB_MAX_RUNNING_PER_USER", 2)),
    # An embed or reindex build with more documents pending than this splits into shards
    # of this many documents, which any number of workers claim at once (0: never).
    "SHARD_SIZE": int(os.environ.get("EMBEDHUB_SHARD_SIZE", 50_000)),
    "DEFAULT_ENCODER": os.environ.get("EMBEDHUB_DEFAULT_ENCODER", ""),
    "INDEX_RETENTION_DAYS": int(os.environ.get("EMBEDHUB_INDEX_RETENTION_DAYS", 7)),
    # The "fake" / "fake:N" encoder override exists for job-mechanics tests and benchmarks;
    # a production deployment refuses it (the tests and benchmarks turn it on).
    "ALLOW_FAKE_ENCODER": env_bool("EMBEDHUB_ALLOW_FAKE_ENCODER", False),
    # A chunked index stores at most this many windows of one document; the rest of a very
    # long document is dropped (and counted in the embed job's result).
    "MAX_CHUNKS_PER_DOCUMENT": int(os.environ.get("EMBEDHUB_MAX_CHUNKS_PER_DOCUMENT", 64)),
    # Exact evaluation and audits read an index's vectors this many rows at a time.
    "VECTOR_BLOCK_ROWS": int(os.environ.get("EMBEDHUB_VECTOR_BLOCK_ROWS", 50_000)),
    # HNSW builds: parallel maintenance workers beside the leader (default: this machine's
    # cores - 1, right for the embedded server, but never fewer than Postgres's own default
    # of 2, which measured no slower on 2 cores; set it to the database server's cores - 1),
    # and the most maintenance_work_mem one build may take: the graph is sized from the
    # table, and a parallel build holds it all in shared memory (/dev/shm) at once.
    "HNSW_BUILD_WORKERS": int(
        os.environ.get("EMBEDHUB_HNSW_BUILD_WORKERS", max((os.cpu_count() or 1) - 1, 2))
    ),
    "HNSW_BUILD_MEMORY_MB": int(os.environ.get("EMBEDHUB_HNSW_BUILD_MEMORY_MB", 2048)),
    # How often a running build's progress (pg_stat_progress_create_index) reaches the job.
    "HNSW_PROGRESS_SECONDS": float(os.environ.get("EMBEDHUB_HNSW_PROGRESS_SECONDS", 2)),
    # The int8 runtime's quality gate re-encodes at most this many documents in fp32 and
    # int8 (the whole corpus when it is no larger; vectors/quality.py says how it samples).
    "RUNTIME_GATE_DOCS": int(os.environ.get("EMBEDHUB_RUNTIME_GATE_DOCS", 2000)),
}

# /metrics (Prometheus): a staff session, or "Authorization: Bearer <this token>"; with
# EMBEDHUB_METRICS_PUBLIC on, anyone who can reach the server (a private network only).
EMBEDHUB_METRICS_TOKEN = os.environ.get("EMBEDHUB_METRICS_TOKEN", "")
EMBEDHUB_METRICS_PUBLIC = env_bool("EMBEDHUB_METRICS_PUBLIC", False)

LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "embedhub.core.logformat.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
