"""Every merge the session record makes equals one of the two serial orders of its requests.

Two requests, each a short random list of the session verbs (set, delete and
increment a key, flash and pop a queue, rotate, log in, set the expiry,
revoke, log out), run on two connections from one snapshot of one stored
session, and both commit. Either the second commit raises ``ConflictError``
and the database holds the first request alone, or the merge made the
database what running the two requests one after the other would have made
it, in one order or the other. Either way the container and its indexes stay
sound (``verify``).

The database is a ``DemoStorage``, which resolves conflicts like FileStorage
and lives in memory; each example also replays both serial orders on fresh
ones. Session ids are random, so states are compared with the original id
abstracted to ``True`` and any other to ``False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import transaction
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from ZODB import DB
from ZODB.DemoStorage import DemoStorage
from ZODB.POSException import ConflictError

from zodbsession.core.manager import SessionManager
from zodbsession.core.session import Session
from zodbsession.core.store import get_container
from zodbsession.ops.verify import verify

KEYS = st.sampled_from(["a", "b", "n"])
VALUES = st.sampled_from([0, 1, "x", [1], [1, 2]])
QUEUES = st.sampled_from(["", "info"])
OPERATIONS = st.one_of(
    st.tuples(st.just("set"), KEYS, VALUES),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("increment"), KEYS),
    st.tuples(st.just("flash"), QUEUES, st.sampled_from(["hi", "bye"])),
    st.tuples(st.just("pop_flash"), QUEUES),
    st.just(("rotate",)),
    st.tuples(st.just("login"), st.sampled_from(["alice", "bob"])),
    st.tuples(st.just("expiry"), st.sampled_from([None, 0, 60, 3600])),
    st.just(("revoke",)),
    st.just(("invalidate",)),
)
REQUESTS = st.lists(OPERATIONS, min_size=1, max_size=3)

#: The clock stands still: no request records an access, and every expiry is computed alike.
NOW = 1_700_000_000.0

Request = Sequence[tuple[Any, ...]]


def apply(manager: SessionManager, conn, session_id: str, request: Request) -> None:
    """One request's verbs on the session its cookie names; after a removal, the rest do nothing."""
    session: Session | None = manager.get(conn, session_id)
    for verb, *args in request:
        if session is None:
            return
        if verb == "set":
            session[args[0]] = args[1]
        elif verb == "delete":
            session.pop(args[0], None)
        elif verb == "increment":
            value = session.get(args[0], 0)
            session[args[0]] = (value if isinstance(value, int) else 0) + 1
        elif verb == "flash":
            session.flash(args[1], queue=args[0])
        elif verb == "pop_flash":
            session.pop_flash(args[0])
        elif verb == "rotate":
            manager.rotate(session)
        elif verb == "login":
            manager.set_user(session, args[0])
        elif verb == "expiry":
            manager.set_expiry(session, args[0])
        elif verb == "revoke":
            manager.revoke(conn, session.id)
            session = None
        else:
            manager.invalidate(session)
            session = None


def fresh(manager: SessionManager, user: str | None) -> tuple[DB, str]:
    """A database holding one session: a little data, a flash message, maybe an owner."""
    db = DB(DemoStorage())
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    session = manager.new(conn)
    session.update({"a": 1, "n": 0})
    session.flash("queued")
    if user is not None:
        manager.set_user(session, user)
    tm.commit()
    conn.close()
    return db, session.id


def run(db: DB, manager: SessionManager, session_id: str, *requests: Request) -> None:
    """The requests one after another, each committed before the next begins."""
    for request in requests:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        apply(manager, conn, session_id, request)
        tm.commit()
        conn.close()


def observe(db: DB, session_id: str) -> dict[str, Any]:
    """What the database holds, with the original id as True and any other as False."""
    conn = db.open(transaction.TransactionManager())
    try:
        container = get_container(conn)
        return {
            "count": len(container),
            "sessions": sorted(
                ((sid == session_id, session.data(), session.user_id, session._expiry)
                 for sid, session in container.sessions.items()), key=repr),
            "by_user": {user: sorted(sid == session_id for sid in ids)
                        for user, ids in container.by_user.items()},
        }
    finally:
        conn.transaction_manager.abort()
        conn.close()


def serially(manager: SessionManager, user: str | None, *requests: Request) -> dict[str, Any]:
    db, session_id = fresh(manager, user)
    try:
        run(db, manager, session_id, *requests)
        return observe(db, session_id)
    finally:
        db.close()


@settings(max_examples=400, deadline=None)
@given(first=REQUESTS, second=REQUESTS, user=st.sampled_from([None, "alice"]))
@example(first=[("set", "a", 2)], second=[("set", "b", 2)], user=None)
@example(first=[("increment", "n")], second=[("increment", "n")], user=None)
@example(first=[("rotate",)], second=[("login", "bob")], user=None)
@example(first=[("rotate",)], second=[("set", "b", 2)], user="alice")
@example(first=[("pop_flash", "")], second=[("pop_flash", "")], user=None)
@example(first=[("revoke",)], second=[("set", "b", 2)], user=None)
@example(first=[("set", "b", 1), ("invalidate",)], second=[("set", "a", 2)], user=None)
@example(first=[("delete", "a"), ("revoke",)], second=[("login", "alice")], user=None)
@example(first=[("set", "b", 1), ("invalidate",)], second=[("rotate",)], user="alice")
@example(first=[("set", "b", 1), ("revoke",)], second=[("expiry", 60)], user=None)
def test_every_merge_equals_running_the_two_requests_one_after_the_other(first, second, user):
    manager = SessionManager(clock=lambda: NOW)
    db, session_id = fresh(manager, user)
    try:
        one, two = (db.open(transaction.TransactionManager()) for _ in range(2))
        apply(manager, one, session_id, first)
        apply(manager, two, session_id, second)  # both from the same snapshot
        one.transaction_manager.commit()
        try:
            two.transaction_manager.commit()
        except ConflictError:
            two.transaction_manager.abort()
            event("conflict")
            assert observe(db, session_id) == serially(manager, user, first)
        else:
            event("merged or disjoint")
            got = observe(db, session_id)
            assert got in (serially(manager, user, first, second), serially(manager, user, second, first))
        assert verify(db).problems == ()
        one.close()
        two.close()
    finally:
        db.close()
