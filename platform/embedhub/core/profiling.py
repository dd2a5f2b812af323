"""Resource measurement shared by the memory tests and the benchmarks."""

from __future__ import annotations

import threading

import psutil


class PeakRss:
    """Samples this process's resident memory every `interval` seconds in a thread.

    Used as `with PeakRss() as rss: ...`; then `rss.peak`, `rss.baseline`, `rss.growth`.
    """

    def __init__(self, interval: float = 0.005):
        self.process = psutil.Process()
        self.baseline = self.peak = self.process.memory_info().rss
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline
