"""``Periodic``: run one piece of work every few seconds on a daemon thread.

The janitor's sweep, the metrics' pool refresh and the admin page's chart
sampler all need the same loop: start once, wait on an event so that ``stop``
ends the wait at once, and survive a failing call (a storage that is down for
a while) by logging it and trying again at the next interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Calls *work* every *interval* seconds until stopped; an interval of 0 disables it.

    With *immediately* the first call comes at start, otherwise after one
    interval. Threading: ``start`` and ``stop`` may be called from any thread;
    *work* runs on the daemon thread named *name*.
    """

    def __init__(self, work: Callable[[], object], interval: float, *, name: str,
                 immediately: bool = False) -> None:
        self.work = work
        self.interval = interval
        self.name = name
        self.immediately = immediately
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the loop; a second call, or an interval of 0, does nothing."""
        if self._thread is None and self.interval > 0:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait up to *timeout* seconds for a call in progress."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        if self.immediately:
            self._call()
        while not self._stopping.wait(self.interval):
            self._call()

    def _call(self) -> None:
        try:
            self.work()
        except Exception:
            log.exception("%s failed; will try again in %s s", self.name, self.interval)
