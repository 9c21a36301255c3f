"""Electing the one janitor of a cluster through the database: a lease record.

Servers that share a database (ZEO, RelStorage) should not all sweep the
same expired sessions; before this they had to be configured apart by hand.
Now each server's janitor takes or renews a lease before it sweeps, in a
short transaction of its own: the lease names its holder and when it lapses.
Two servers taking it at once write the same record, and ZODB's conflict
decides: one commits, the other's commit fails and it does not sweep.

While it sweeps, every batch's transaction re-reads the lease as current
(``readCurrent``) and checks that it still names this holder, so a holder
that stalled past its lease (a long pause, a frozen machine) and was taken
over has its next batch fail instead of committing beside the new holder's:
sweep batches of two holders never interleave. Each transaction is noted
with its holder, so the history shows it (``tests/ops/test_lease.py`` reads it).

A holder that stops gives the lease up, so another takes over at its next
try; one that dies is taken over once the lease lapses: within two lease
periods when every janitor tries once per interval and the period is at
least the interval.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import transaction
from persistent import Persistent
from transaction.interfaces import TransientError
from ZODB import DB
from ZODB.Connection import Connection

from zodbsession.core.errors import ZodbSessionError
from zodbsession.core.manager import SessionManager

log = logging.getLogger(__name__)

#: Where the lease lives: a key of the root of the database that holds the sessions.
LEASE_KEY = "zodbsession.janitor_lease"


class LeaseLost(ZodbSessionError):
    """The janitor lease names another holder now: this server stops sweeping."""


class JanitorLease(Persistent):  # type: ignore[misc]  # persistent is untyped
    """The record: who holds the lease, since when, and until when."""

    holder = ""
    taken = 0.0  # when the holder took it (renewals keep it)
    expires = 0.0  # the holder's clock; past it, anyone may take the lease


def default_holder() -> str:
    """A name for this process that no other process shares: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Lease:
    """One server's claim to the janitor lease, with *period* seconds per grant.

    Threading: used by the janitor's thread only.
    """

    def __init__(self, db: DB, manager: SessionManager, *, period: float,
                 holder: str | None = None, clock: Callable[[], float] = time.time) -> None:
        if period <= 0:
            raise ValueError(f"the lease period must be above 0, not {period}")
        self.db = db
        self.manager = manager
        self.period = period
        self.holder = holder or default_holder()
        self.clock = clock
        self.held = False

    def _root(self, conn: Connection) -> Any:
        # The lease sits beside the sessions, in the database that holds them.
        container = self.manager.container(conn)
        return container._p_jar.root() if container is not None else conn.root()

    def acquire(self) -> bool:
        """Take the lease if it is free or lapsed, renew it if it is ours; whether we hold it."""
        tm = transaction.TransactionManager(explicit=True)
        conn = self.db.open(transaction_manager=tm)
        try:
            tm.begin()
            root = self._root(conn)
            lease = root.get(LEASE_KEY)
            if lease is None:
                lease = root[LEASE_KEY] = JanitorLease()
            now = self.clock()
            if lease.holder != self.holder and lease.expires > now:
                tm.abort()
                self._lost(lease.holder)
                return False
            if lease.holder != self.holder:
                lease.holder, lease.taken = self.holder, now
                tm.get().note(f"zodbsession: janitor lease taken by {self.holder}")
            else:
                tm.get().note(f"zodbsession: janitor lease renewed by {self.holder}")
            lease.expires = now + self.period
            tm.commit()
        except TransientError:
            # Another server wrote the lease at the same moment: it won.
            with contextlib.suppress(Exception):
                tm.abort()
            self._lost("another server")
            return False
        finally:
            conn.close()
        if not self.held:
            log.info("janitor: %s holds the janitor lease now (%g s per grant)", self.holder, self.period)
        self.held = True
        return True

    def _lost(self, other: str) -> None:
        if self.held:
            log.info("janitor: the janitor lease went to %s; this server stops sweeping", other)
        self.held = False

    def release(self) -> None:
        """Give the lease up, if we hold it, so that another server takes over at once."""
        if not self.held:
            return
        with contextlib.suppress(Exception), self.db.transaction() as conn:
            lease = self._root(conn).get(LEASE_KEY)
            if lease is not None and lease.holder == self.holder:
                lease.expires = 0.0
                conn.transaction_manager.get().note(f"zodbsession: janitor lease released by {self.holder}")
        self.held = False

    @contextlib.contextmanager
    def guard(self, conn: Connection) -> Iterator[None]:
        """While inside, every commit on *conn* first checks the lease is still ours (``LeaseLost``)."""
        synch = _Guard(self, conn)
        tm = conn.transaction_manager
        tm.registerSynch(synch)
        try:
            yield
        finally:
            tm.unregisterSynch(synch)

    def check(self, conn: Connection, txn: transaction.Transaction) -> None:
        """The before-commit check of one guarded transaction."""
        lease = self._root(conn).get(LEASE_KEY)
        if lease is None or lease.holder != self.holder:
            self._lost(lease.holder if lease is not None else "nobody")
            raise LeaseLost(f"the janitor lease is held by {lease.holder if lease else 'nobody'}, "
                            f"not {self.holder}")
        # A takeover committed after this read makes our commit conflict.
        conn.readCurrent(lease)
        txn.note(f"zodbsession: janitor sweep by {self.holder}")


class _Guard:
    """A transaction synchronizer that puts the lease check into every new transaction."""

    def __init__(self, lease: Lease, conn: Connection) -> None:
        self.lease = lease
        self.conn = conn

    def newTransaction(self, txn: transaction.Transaction) -> None:  # noqa: N802 (ISynchronizer)
        txn.addBeforeCommitHook(self.lease.check, (self.conn, txn))

    def beforeCompletion(self, txn: transaction.Transaction) -> None:  # noqa: N802
        pass

    def afterCompletion(self, txn: transaction.Transaction) -> None:  # noqa: N802
        pass
