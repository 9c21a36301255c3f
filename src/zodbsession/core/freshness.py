"""Read-your-writes across processes: before a cookie gets a fresh session, catch up.

A request's transaction reads a snapshot of the storage taken when it
began. On ZEO, ``server_sync=1`` makes that begin a round trip to the server,
and in ZEO 6.2 / ZODB 6.4 that round trip does order every invalidation the
server sent before it ahead of the snapshot: the server queues a commit's
invalidations for the other clients inside ``tpc_finish``, before answering
the committer, on the one event loop that serves every client; each client
applies them in its I/O thread as it reads them, before the reply to its
``ping`` resolves. Measured on bare ZODB connections, commit on one client
then at once begin on another (``python -m bench.zeo_ordering``): 0 of
6,000 pairs behind (with ``server_sync=0``, 81 and 169 of 1,000). The misses seen from outside (a few in a
hundred pairs, under load, a fresh session for a cookie another server had
just created) are not explained by that chain; their cause is not known
(docs/operating.md, "Read-your-writes across app servers", says what was
read and excluded). One hazard is known: ZODB binds a connection's ``sync``
when the connection is made, and ``ClientStorage`` makes it the ping only
once connected, so a connection made before that never makes the round trip
(``open_db`` waits for the server; a test checks every pooled connection).

So a cookie that names no session this transaction can see is not believed
at once. ``catch_up`` asks the server itself for its newest transaction (one
more round trip, on this miss path only: a found session, or a request
without a cookie, costs nothing). If that is newer than the snapshot, it
waits until this process has received it, then moves the connection's
snapshot forward as a begin does and the lookup is made again; a connection
already holding changes cannot move, and raises ``SnapshotBehind``, a
``TransientError`` the front door retries. If this process cannot catch up
within ``CATCH_UP_WAIT`` seconds, the request fails with
``StorageUnavailable`` (503 with ``Retry-After``) rather than handing out a
session that may be a lie.

Storages that need no such check: an embedded FileStorage or MappingStorage
(one process sees its own commits at once), and RelStorage, whose
transactions begin with a poll of the SQL database itself, so that their
snapshot already is the database's state at that moment.
"""

from __future__ import annotations

import time
from typing import Any

from ZODB import DB
from ZODB.Connection import Connection
from ZODB.utils import p64, tid_repr, u64

from zodbsession.core.errors import SnapshotBehind, StorageUnavailable

#: Seconds ``catch_up`` waits, at most, for this process to receive what the storage has.
CATCH_UP_WAIT = 10.0
#: Seconds between two looks at what this process has received, while it waits.
POLL_INTERVAL = 0.005


def client_storage(connection: Connection) -> Any | None:
    """The ZEO ``ClientStorage`` behind *connection*, or None for any other storage."""
    storage = getattr(getattr(connection, "_storage", None), "_storage", None)
    if storage is None:
        return None
    kind = type(storage)
    if kind.__module__ == "ZEO.ClientStorage" and kind.__name__ == "ClientStorage":
        return storage
    return None


def cookieless_begin_may_skip_round_trip(db: DB) -> bool:
    """Whether a request that names no session may begin without asking the storage for news.

    True when every database of *db* is on ZEO or on a storage with no
    ``sync`` at all (FileStorage, MappingStorage: their begin has no round
    trip to skip). A request with a session cookie always makes ZEO's round
    trip (``server_sync``): read-your-writes across servers is about the
    session it names. A request without one has no session elsewhere to
    miss: it begins on what this process has already heard from the server
    (invalidations arrive as transactions commit, which is ZEO's own
    default, ``server_sync=0``), so that a page that reads nothing uncached
    is answered even while the ZEO server is stopped. Never for RelStorage,
    whose ``sync`` is what moves its view to the present.
    """
    for database in db.databases.values():
        storage = database.storage
        kind = type(storage)
        if kind.__module__ == "ZEO.ClientStorage" and kind.__name__ == "ClientStorage":
            continue
        if hasattr(storage, "sync"):
            return False
    return True


def snapshot_start(connection: Connection) -> bytes | None:
    """The first transaction id *connection*'s current snapshot does not include; None if unknown."""
    start = getattr(connection._storage, "_start", None)
    return start if isinstance(start, bytes) else None


def catch_up(connection: Connection, *, wait: float | None = None) -> bool:
    """Whether *connection* now reads a newer snapshot, in which a lookup must be made again.

    Call it when a lookup found nothing, before acting on the absence.
    False: the storage has nothing newer than the snapshot, the absence is
    real. Else it waits (at most *wait* seconds, ``CATCH_UP_WAIT`` by default, then ``StorageUnavailable``)
    until this process holds the storage's newest transaction, and moves the
    connection's snapshot forward as a transaction's begin does: True. A
    connection holding changes cannot move (its changes would be lost):
    ``SnapshotBehind`` makes the front door retry the attempt instead.
    """
    storage = client_storage(connection)
    start = snapshot_start(connection)
    if storage is None or start is None:
        return False
    newest: bytes = storage._call("lastTransaction")  # the server's own, after a round trip
    if u64(newest) < u64(start):
        return False
    wait = CATCH_UP_WAIT if wait is None else wait
    deadline = time.monotonic() + wait
    while u64(storage.lastTransaction()) < u64(newest):
        if time.monotonic() >= deadline:
            raise StorageUnavailable(
                f"this process has not received the storage's newest transaction "
                f"({tid_repr(newest)}) within {wait:g} s: its invalidations are held up")
        time.sleep(POLL_INTERVAL)
    if connection._registered_objects or connection._added:
        raise SnapshotBehind(tid_repr(p64(u64(start) - 1)), tid_repr(newest))
    # What a transaction's begin does, without the round trip just made:
    # apply the invalidations received since, and read as of the newest.
    connection.newTransaction(None, False)
    return True
