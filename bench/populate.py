"""Filling a database with S sessions fast: straight into the container, not through HTTP.

A million sessions made one request at a time would take an hour of fsyncs.
Here they are built in large transactions with a fixed clock, in sorted id
order so that each transaction appends to a few BTree buckets instead of
rewriting buckets all over the tree. The resulting trees are as deep as ones
grown by random inserts (buckets are about half full instead of two thirds),
which is what the lookups pay for.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB import DB

from zodbsession.core.manager import SessionManager
from zodbsession.core.session import Session, new_session_id
from zodbsession.core.store import get_container

#: Sessions per transaction while populating: large, but memory stays bounded.
BATCH = 20_000

#: The root key of the plain-ZODB reference's ``OOBTree`` of sessions.
PLAIN_ROOT_KEY = "bench.sessions"
#: The root key of zope.session's data container, and the product id used in it.
ZOPE_ROOT_KEY = "bench.sdc"
ZOPE_PRODUCT = "bench"


def sorted_ids(count: int) -> list[str]:
    """*count* fresh ids, shaped like zodbsession's, sorted."""
    return sorted(new_session_id() for _ in range(count))


def _batches(items: Sequence, size: int = BATCH) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _commit_batch(db: DB, work) -> None:
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    try:
        with tm:
            work(conn)
        conn.cacheMinimize()
    finally:
        conn.close()


def populate_zodbsession(
    db: DB, plan: Sequence[tuple[int, float]], manager: SessionManager | None = None, seed: int = 1
) -> int:
    """Store sessions in zodbsession's container; returns how many.

    *plan* lists ``(count, created)`` groups: *count* sessions created (and
    last used) at the fixed time *created*. The groups are shuffled among the
    ids, so that stale and fresh sessions share buckets as they would live.
    Each session is indexed with the deadline *manager* (default timeouts)
    gives it, exactly as ``SessionContainer.add`` does for a request.
    """
    manager = manager if manager is not None else SessionManager()
    labels = [created for count, created in plan for _ in range(count)]
    random.Random(seed).shuffle(labels)
    pairs = list(zip(sorted_ids(len(labels)), labels, strict=True))

    def add(batch: Sequence[tuple[str, float]]):
        def work(conn) -> None:
            container = get_container(conn)
            for session_id, created in batch:
                session = Session(session_id, created)
                session._data["count"] = 0
                container.add(session, session.deadline(manager.idle_timeout, manager.max_lifetime))

        return work

    _commit_batch(db, lambda conn: get_container(conn))
    for batch in _batches(pairs):
        _commit_batch(db, add(batch))
    return len(pairs)


def populate_plain(db: DB, count: int) -> int:
    """Store *count* ``PersistentMapping`` sessions in the reference's ``OOBTree``."""

    def add(batch: Sequence[str]):
        def work(conn) -> None:
            tree = conn.root()[PLAIN_ROOT_KEY]
            for session_id in batch:
                tree[session_id] = PersistentMapping(count=0)

        return work

    def make_tree(conn) -> None:
        conn.root()[PLAIN_ROOT_KEY] = OOBTree()

    _commit_batch(db, make_tree)
    for batch in _batches(sorted_ids(count)):
        _commit_batch(db, add(batch))
    return count


def populate_zope_session(db: DB, count: int, now: float) -> int:
    """Store *count* sessions in a zope.session ``PersistentSessionDataContainer``.

    Each is a ``SessionData`` holding one ``SessionPkgData`` under
    ``ZOPE_PRODUCT``, what ``zope.session.session.Session.__getitem__``
    creates on first use, last accessed at *now*.
    """
    from zope.session.session import PersistentSessionDataContainer, SessionData, SessionPkgData

    def add(batch: Sequence[str]):
        def work(conn) -> None:
            container = conn.root()[ZOPE_ROOT_KEY]
            for client_id in batch:
                data = SessionData()
                package = data[ZOPE_PRODUCT] = SessionPkgData()
                package["count"] = 0
                container.data[client_id] = data
                data.setLastAccessTime(int(now))

        return work

    def make_container(conn) -> None:
        conn.root()[ZOPE_ROOT_KEY] = PersistentSessionDataContainer()

    _commit_batch(db, make_container)
    for batch in _batches(sorted_ids(count)):
        _commit_batch(db, add(batch))
    return count

