"""A server's load as ``varstore status`` shows it, measured by the server itself: requests
finished per second and CPU used over the last few seconds, and requests in flight now.

A sampler thread notes the request count and the process's CPU time every second; a status
call compares the newest note with the oldest within :data:`WINDOW` seconds, so the figures
describe the last ten seconds or so, not the server's whole life.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Load", "LoadMeter"]

WINDOW = 10.0
SAMPLE_SECONDS = 1.0


@dataclass(frozen=True)
class Load:
    """Requests finished per second and CPU used (percent of one core) over about the last
    :data:`WINDOW` seconds, and the requests in flight (the asking call not counted)."""

    requests_per_second: float
    cpu_percent: float
    in_flight: int


class LoadMeter:
    """Samples ``finished()`` (requests finished so far) and the process's CPU time every
    :data:`SAMPLE_SECONDS` until :meth:`close`; ``in_flight()`` is read when asked."""

    def __init__(self, finished: Callable[[], float], in_flight: Callable[[], float]) -> None:
        self._finished = finished
        self._in_flight = in_flight
        self._samples: deque[tuple[float, float, float]] = deque(
            maxlen=int(WINDOW / SAMPLE_SECONDS) + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sample()
        threading.Thread(target=self._run, name="varstore-load", daemon=True).start()

    def _sample(self) -> tuple[float, float, float]:
        sample = (time.monotonic(), self._finished(), time.process_time())
        with self._lock:
            self._samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def load(self, asking: int = 1) -> Load:
        """The load now; ``asking`` calls in flight (the status call itself) are not
        counted."""
        with self._lock:
            first = self._samples[0]
        last = self._sample()
        seconds = last[0] - first[0]
        if seconds <= 0:
            rate = cpu = 0.0
        else:
            rate = (last[1] - first[1]) / seconds
            cpu = 100.0 * (last[2] - first[2]) / seconds
        return Load(rate, cpu, max(0, int(self._in_flight()) - asking))

    def close(self) -> None:
        """Stops sampling."""
        self._stop.set()
