# The vectors tests' corpus and model-version fixtures: the metrics tests embed the same way.
from tests.vectors.conftest import corpus, model_version  # noqa: F401
