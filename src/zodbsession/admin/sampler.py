"""The recent history behind the admin page's charts: a bounded ring of metric samples.

Prometheus keeps the long history; the admin page only needs the last hour or
so to draw sessions over time and per-second rates, without a time-series
database. Rates are differences between consecutive samples of counters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zodbsession.core.periodic import Periodic
from zodbsession.ops.metrics import Metrics

log = logging.getLogger(__name__)

#: The counters a sample keeps; ``rates`` and ``recent_rate`` take one of these.
COUNTERS = ("requests", "retries", "conflicts", "answers_503")


@dataclass(frozen=True)
class Sample:
    """The figures at one moment."""

    at: float
    live_sessions: int | None
    requests: int
    retries: int
    conflicts: int
    answers_503: int


class Sampler:
    """The last *capacity* samples of *metrics*, taken every *interval* seconds.

    ``start`` takes them on a daemon thread; without it, page views take one
    when the last is older than *interval* (``take_if_due``). Memory is
    bounded by *capacity*: 720 five-second samples are the last hour.
    Threading: any thread may call any method.
    """

    def __init__(self, metrics: Metrics, *, interval: float = 5.0, capacity: int = 720,
                 clock: Callable[[], float] = time.time) -> None:
        if interval <= 0 or capacity < 2:
            raise ValueError(f"interval must be positive and capacity at least 2 "
                             f"(got {interval!r}, {capacity!r})")
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        self._samples: deque[Sample] = deque(maxlen=capacity)  # oldest first
        self._lock = threading.Lock()
        # A failing sample (the storage down for a while) is logged and the
        # loop lives on; the page says what it can.
        self._loop = Periodic(self.take_if_due, interval, name="zodbsession-admin-sampler",
                              immediately=True)

    def take(self) -> Sample:
        """Sample the metrics now and keep the sample."""
        snap = self.metrics.snapshot()
        sample = Sample(at=self.clock(), live_sessions=snap["live_sessions"],
                        requests=snap["requests_total"], retries=snap["retries"],
                        conflicts=snap["conflicts"], answers_503=snap["answers_503"])
        self._samples.append(sample)
        return sample

    def take_if_due(self) -> None:
        """Take a sample unless the last one is younger than the interval."""
        with self._lock:  # two page views at once take one sample, not two
            if not self._samples or self.clock() - self._samples[-1].at >= self.interval:
                self.take()

    def samples(self) -> list[Sample]:
        """The samples kept, oldest first."""
        return list(self._samples)

    def start(self) -> Sampler:
        """Sample every interval on a daemon thread; a second call does nothing."""
        self._loop.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the sampling thread, if any, and wait for it."""
        self._loop.stop(timeout)


def rates(samples: Sequence[Sample], counter: str) -> list[tuple[float, float]]:
    """``(when, per second)`` increase of *counter* between consecutive samples, never negative."""
    return [(b.at, max(getattr(b, counter) - getattr(a, counter), 0) / (b.at - a.at))
            for a, b in zip(samples, samples[1:], strict=False) if b.at > a.at]


def recent_rate(samples: Sequence[Sample], counter: str, window: float = 60.0) -> float | None:
    """Per-second increase of *counter* over about the last *window* seconds; None before two samples."""
    if len(samples) < 2:
        return None
    last = samples[-1]
    first = next((s for s in samples if s.at >= last.at - window), samples[0])
    if first is last:
        first = samples[-2]
    if last.at <= first.at:
        return None
    grown: float = max(getattr(last, counter) - getattr(first, counter), 0)
    return grown / (last.at - first.at)
