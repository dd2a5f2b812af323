# The vectors tests' corpus and model-version fixtures: reindexing builds on the same setup.
from tests.vectors.conftest import corpus, model_version  # noqa: F401
