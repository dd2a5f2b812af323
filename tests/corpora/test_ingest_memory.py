"""A large file ingests with flat memory: nothing is read whole."""

from __future__ import annotations

import json
import mmap
import time

import pytest

from embedhub.core.profiling import PeakRss
from embedhub.corpora.models import Document

LINES = 200_000


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_200k_line_file_ingests_with_memory_far_below_its_size(tmp_path, ingest, corpus):
    path = tmp_path / "big.jsonl"
    filler = "lorem ipsum dolor sit amet " * 8
    with open(path, "w") as f:
        for i in range(LINES):
            f.write(
                json.dumps({"_id": f"doc-{i}", "title": f"T{i}", "text": f"{i} {filler}"}) + "\n"
            )
    size = path.stat().st_size
    assert size > 40 * 1024 * 1024

    started = time.monotonic()
    with PeakRss() as rss:
        result = ingest(path)
    seconds = time.monotonic() - started

    assert result["inserted"] == LINES
    assert Document.objects.filter(corpus=corpus).count() == LINES
    assert rss.growth < size / 4, (
        f"peak RSS grew {rss.growth / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"
    )
    # The instrument itself sees a 20 MiB allocation, so the small number above is real.
    # Fresh anonymous pages, each written: heap memory freed by earlier tests could be
    # reused without growing RSS, a new mapping cannot.
    with PeakRss() as control:
        block = mmap.mmap(-1, 20 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        time.sleep(0.05)
    block.close()
    assert control.growth > 15 * 2**20
    print(
        f"{LINES} lines, {size / 2**20:.0f} MiB in {seconds:.1f}s, peak RSS +{rss.growth / 2**20:.1f} MiB"
    )
