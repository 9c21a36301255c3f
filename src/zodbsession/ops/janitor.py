"""The janitor: a background thread in the server that expires stale sessions.

Expiry that nobody schedules does not happen (Django's expired rows pile up
until someone runs ``clearsessions``), so the server ships with it running.
The sweep commits in small batches on a connection of its own, so requests
are held up by at most one small commit, and no request ever pays for it; a
batch that conflicts is retried by the one retry policy (``work.WORK_POLICY``),
and a sweep that fails anyway is tried again at the next interval. Servers
sharing a database elect one janitor among them with a lease in the database
(``zodbsession.ops.lease``): the others skip their sweeps.
"""

from __future__ import annotations

import contextlib
import logging
import time

from ZODB import DB

from zodbsession.core.manager import SessionManager
from zodbsession.core.periodic import Periodic
from zodbsession.core.work import connection
from zodbsession.ops.lease import Lease, LeaseLost

log = logging.getLogger(__name__)


class Janitor:
    """Runs ``SessionManager.expire`` every *interval* seconds until stopped.

    Threading: ``start`` and ``stop`` may be called from any thread; the
    sweep itself runs on the janitor's own daemon thread and connection.
    """

    def __init__(self, db: DB, manager: SessionManager, *, interval: float,
                 batch_size: int = 500, lease: Lease | None = None) -> None:
        self.db = db
        self.lease = lease
        self.manager = manager
        self.interval = interval
        self.batch_size = batch_size
        # A failed sweep (a storage hiccup, a conflict storm) is logged and
        # retried at the next interval; the server keeps serving.
        self._loop = Periodic(self.sweep, interval, name="zodbsession-janitor")

    def start(self) -> Janitor:
        """Start sweeping (no-op when the interval is 0: the janitor is disabled)."""
        self._loop.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the janitor to stop, wait for its current batch, and give the lease up."""
        self._loop.stop(timeout)
        if self.lease is not None:
            self.lease.release()

    def sweep(self) -> int:
        """Run one sweep now, on a connection of its own; returns how many expired.

        A finished sweep is reported to the manager's observers
        (``janitor_ran``); one that fails raises, and is not reported. With
        a lease, a server that does not hold it sweeps nothing, and one that
        loses it mid-sweep stops at the next batch.
        """
        if getattr(self.db, "storage", None) is None:  # closed under it (ZODB's DB.close removes it)
            return 0
        if self.lease is not None and not self.lease.acquire():
            return 0
        started = time.monotonic()
        with connection(self.db) as conn:
            guard = self.lease.guard(conn) if self.lease is not None else contextlib.nullcontext()
            try:
                with guard:
                    removed = self.manager.expire(conn, batch_size=self.batch_size)
            except LeaseLost:
                log.info("janitor: the lease was taken over; this sweep stopped")
                return 0
        duration = time.monotonic() - started
        if removed:
            log.info("janitor expired %d session(s) in %.3f s", removed, duration)
        self.manager.observers.janitor_ran(removed, duration)
        return removed

