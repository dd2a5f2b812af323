"""Browser fixtures: Debian's Chromium driven by Playwright, headless, against live_server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Playwright's sync API runs an event loop in the test thread; Django's ORM refuses sync
# calls inside one unless told that this (single-threaded test) use is safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = Path(os.environ.get("EMBEDHUB_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # Without these Chromium keeps dialling update and sync servers on a closed network.
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]


@pytest.fixture(scope="session")
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (scripts/browser-deps.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, live_server):
    context = chromium.new_context(
        base_url=live_server.url, viewport={"width": 1360, "height": 900}
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    # A JS exception on any page fails the test: a broken script is a broken dashboard.
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def screenshot():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def browser_login(page, *, username: str, password: str = "pw") -> None:
    page.goto("/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


@pytest.fixture
def lineage(user):
    """A corpus with a base version's index (active) and a fine-tuned child's index (ready),
    a query set, and evaluation runs of the child's queries on the base index, with and
    without drift compensation."""
    from embedhub.evaluation.models import EvalRun, QuerySet
    from embedhub.vectors.models import VectorIndex
    from embedhub.vectors.services import index_activate, index_create
    from tests.factories import CorpusFactory, ModelVersionFactory

    corpus = CorpusFactory(owner=user, name="lineage-corpus")
    base = ModelVersionFactory(version=1)
    child = ModelVersionFactory(
        version=2,
        parent=base,
        drift_norm=0.1234,
        loss_curve=[
            {"step": 1, "loss": 2.0},
            {"step": 2, "loss": 1.5},
            {"step": 3, "loss": 1.1},
        ],
    )
    old = index_create(owner=user, corpus=corpus, model_version=base, encoder="fake:8")
    new = index_create(owner=user, corpus=corpus, model_version=child, encoder="fake:8")
    VectorIndex.objects.filter(pk__in=[old.pk, new.pk]).update(state=VectorIndex.State.READY)
    index_activate(index=VectorIndex.objects.get(pk=old.pk))
    qs = QuerySet.objects.create(owner=user, corpus=corpus, name="dev")
    runs = {
        mode: EvalRun.objects.create(
            owner=user,
            query_set=qs,
            index=old,
            model_version=child,
            compensation=mode,
            metrics={"ndcg@10": score, "recall@100": score + 0.1, "mrr@10": score},
            n_queries=5,
        )
        for mode, score in (("none", 0.41), ("qdc", 0.52))
    }
    return {"corpus": corpus, "base": base, "child": child, "old": old, "new": new, "runs": runs}
