"""Short units of work on a connection of one's own: open, retry, batch, close.

Expiry, the maintenance commands and ``verify`` run beside live requests and
share one discipline, kept here (internal, not re-exported): a private
connection with an explicit transaction manager; short transactions retried
by the one ``RetryPolicy`` (``retry``) on conflicts; long walks cut by a
cursor into batches. Retrying every ``TransientError`` includes ZEO's ``ClientDisconnected``, which
the publisher must not retry (an unknown commit outcome could apply twice); it
is safe here because every unit of work is idempotent (an expired or revoked
session is simply not found again), so the worst is a count too low.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from itertools import islice
from typing import Any, TypeVar

import transaction
from transaction.interfaces import NoTransaction
from ZODB import DB
from ZODB.Connection import Connection

from zodbsession.core.commit import anything_joined
from zodbsession.core.errors import UncommittedChanges
from zodbsession.core.retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Keys read per transaction when walking a tree; memory stays flat in it.
CHUNK_SIZE = 1000

#: Tries of one transaction that conflicts with concurrent requests.
ATTEMPTS = 5

#: The retry policy of units of work: 20 ms doubling, at most half a second.
WORK_POLICY = RetryPolicy(ATTEMPTS, backoff=0.02, max_backoff=0.5)


@contextmanager
def connection(db: DB) -> Iterator[Connection]:
    """A connection with its own explicit transaction manager, closed afterwards."""
    tm = transaction.TransactionManager(explicit=True)
    conn = db.open(tm)
    try:
        yield conn
    finally:
        _abort_quietly(tm)
        # Give the pool back a connection that holds none of our objects.
        conn.cacheMinimize()
        conn.close()


def in_transaction(
    conn: Connection,
    unit: Callable[[], T],
    *,
    write: bool,
    attempts: int = ATTEMPTS,
    name: str = "maintenance",
    retry: RetryPolicy | None = None,
) -> T:
    """Run *unit* in a transaction of its own, committed if *write*, else aborted.

    An error the retry policy calls retryable (a ``TransientError``, or one a
    joined data manager's ``should_retry`` accepts) is retried after its
    back-off, up to *attempts* tries (*retry*'s own when given); anything
    else, KeyboardInterrupt included, aborts and propagates. *name* says
    whose work it is in the log and in errors. Changes not yet committed on
    *conn*'s transaction manager raise ``UncommittedChanges``: beginning
    would silently discard them.
    """
    policy = retry if retry is not None else WORK_POLICY.with_attempts(attempts)
    tm = conn.transaction_manager
    if _holds_changes(tm):
        raise UncommittedChanges(
            f"{name} works in transactions of its own, and beginning one would silently "
            "discard the changes not yet committed on this connection's transaction "
            "manager: commit or abort them before calling it"
        )
    attempt = 1
    while True:
        tm.begin()
        try:
            result = unit()
            if write:
                tm.commit()
            else:
                tm.abort()
            return result
        except BaseException as exc:
            # Asked before the abort, which forgets the data managers that joined.
            retryable = attempt < policy.attempts and policy.retryable(exc, _current(tm))
            _abort_quietly(tm)
            if not retryable:
                raise
            log.info("%s transaction failed with %s (attempt %d), retrying", name,
                     type(exc).__name__, attempt)
            policy.pause(attempt)
            attempt += 1


def keys_after(tree: Any, cursor: Any, count: int, **bounds: Any) -> list[Any]:
    """Up to *count* keys of *tree* after *cursor* (None: from the start)."""
    if cursor is not None:
        bounds.update(min=cursor, excludemin=True)
    return list(islice(tree.keys(**bounds), count))


def run_batches(
    conn: Connection,
    step: Callable[[Any], tuple[int, Any, bool]],
    progress: Callable[[int], None] | None = None,
    *,
    write: bool = True,
    attempts: int = ATTEMPTS,
    name: str = "maintenance",
    retry: RetryPolicy | None = None,
) -> int:
    """Run ``step(cursor) -> (done, next_cursor, finished)`` until finished; sum the dones.

    Each step is an ``in_transaction`` of its own, and *progress* gets the
    running total after each. A cursor (the last key handled) rather than
    "the first keys left" makes the walk end even while requests keep adding
    keys; a step that consumes what it reads (expiry) may ignore it.
    """
    done = 0
    cursor = None
    while True:
        count, cursor, finished = in_transaction(
            conn, partial(step, cursor), write=write, attempts=attempts, name=name, retry=retry
        )
        done += count
        if progress is not None:
            progress(done)
        if finished:
            return done


def root_of(conn: Connection, database_name: str) -> Any:
    """The root of the database so named in *conn*'s (multi-)database."""
    if database_name != conn.db().database_name:
        conn = conn.get_connection(database_name)
    return conn.root()


def class_name(obj: object) -> str:
    """The dotted name of *obj*'s class, as reports show a storage."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _abort_quietly(tm: transaction.TransactionManager) -> None:
    with suppress(NoTransaction):  # explicit mode: nothing begun, nothing to abort
        tm.abort()


def _current(tm: transaction.TransactionManager) -> Any:
    try:
        return tm.get()
    except NoTransaction:
        return None


def _holds_changes(tm: transaction.TransactionManager) -> bool:
    try:
        txn = tm.get()
    except NoTransaction:  # explicit mode, nothing begun
        return False
    # A data manager joins the transaction at its first change (a ZODB
    # connection at its first write, in any database of a multi-database).
    return anything_joined(txn)
