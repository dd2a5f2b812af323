"""Test settings: the real embedded services, a fast password hasher, debug on."""

import os

os.environ.setdefault("DEBUG", "1")

from .base import *  # noqa: E402,F403
from .base import REST_FRAMEWORK  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_THROTTLE_RATES": {
        "uploads": "10000/hour",
        "jobs": "10000/hour",
        "search": "10000/hour",
    },
}

# Each pytest process gets its own test database and Redis db, so parallel runs never
# see each other's rows or messages. The worker subprocess is told both via the env.
DATABASES["default"]["TEST"] = {"NAME": f"test_embedhub_{os.getpid()}"}  # noqa: F405
if not os.environ.get("CELERY_BROKER_URL"):
    CELERY_BROKER_URL = embedded.redis_url(VAR_DIR, db=1 + os.getpid() % 250)  # noqa: F405
# The fake encoder keeps job-mechanics tests fast and model-free.
EMBEDHUB = {**EMBEDHUB, "HEARTBEAT_SECONDS": 0.5, "ALLOW_FAKE_ENCODER": True}  # noqa: F405
if not os.environ.get("ARTIFACT_ROOT"):
    ARTIFACT_ROOT = VAR_DIR / "test-artifacts" / str(os.getpid())  # noqa: F405
if not os.environ.get("MEDIA_ROOT"):
    MEDIA_ROOT = VAR_DIR / "test-media" / str(os.getpid())  # noqa: F405

STATIC_ROOT = VAR_DIR / "test-static"  # noqa: F405
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing root
