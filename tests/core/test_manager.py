"""Tests for manager.py: lazy creation, timeouts, access resolution, identity
changes, the Quixote persistence pair and expiry."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta, timezone

import pytest
from transaction.interfaces import AlreadyInTransaction
from ZODB.utils import u64

from zodbsession.core.db import open_db
from zodbsession.core.errors import ConfigError, InvalidUserId, UncommittedChanges, ZodbSessionError
from zodbsession.core.manager import MAX_USER_ID_LENGTH, SessionManager
from zodbsession.core.store import EXPIRY_SLOT_SECONDS, ROOT_KEY, expiry_slot, get_container

IDLE = 1800.0
LIFETIME = 8 * 3600.0
RESOLUTION = 60.0
EPSILON = 1e-3
#: After a deadline, the sweep finds the session within one slot width.
EXPIRY_WIDTH = EXPIRY_SLOT_SECONDS


def _commit(conn) -> None:
    conn.transaction_manager.commit()


def _oids_written_since(storage, tid: bytes) -> list[bytes]:
    """Every oid a transaction after *tid* wrote, read back from the storage."""
    start = (u64(tid) + 1).to_bytes(8, "big")
    return [record.oid for txn in storage.iterator(start) for record in txn]


def _stored_session(manager, conn, **data):
    session = manager.new(conn)
    session.update(data or {"a": 1})
    _commit(conn)
    return session


# -- configuration ---------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"idle_timeout": 0},
        {"idle_timeout": -1},
        {"max_lifetime": 0},
        {"access_resolution": -1},
        {"idle_timeout": 60, "access_resolution": 60},
        {"idle_timeout": 3600, "max_lifetime": 1800},
    ],
    ids=["zero-idle", "negative-idle", "zero-lifetime", "negative-resolution", "resolution>=idle",
         "lifetime<idle"],
)
def test_bad_timeouts_raise_config_error_naming_the_key(options):
    with pytest.raises(ConfigError) as info:
        SessionManager(**options)
    assert info.value.key in options


# -- lazy creation ---------------------------------------------------------


def test_new_session_stores_nothing_until_first_write(manager, db, conn):
    session = manager.new(conn)
    assert not session.is_stored
    assert ROOT_KEY not in conn.root()
    assert conn._registered_objects == []
    session["a"] = 1
    assert session.is_stored
    _commit(conn)
    container = get_container(conn, create=False)
    assert len(container) == 1
    assert container.get(session.id) is session


def test_unwritten_new_session_leaves_database_byte_identical(manager, db, db_path, connect):
    conn = connect(db)
    _stored_session(manager, conn)  # the container already exists
    with open(db_path, "rb") as f:
        before_bytes = f.read()
    before_tid = db.storage.lastTransaction()

    session = manager.new(conn)
    _ = session.get("a"), len(session), session.id
    manager.rotate(session)
    _commit(conn)

    assert db.storage.lastTransaction() == before_tid
    with open(db_path, "rb") as f:
        assert f.read() == before_bytes
    assert len(get_container(conn)) == 1


def test_unwritten_new_session_does_not_create_container(manager, db, db_path, conn):
    size = os.path.getsize(db_path)
    manager.new(conn)
    _commit(conn)
    assert os.path.getsize(db_path) == size
    assert get_container(conn, create=False) is None


def test_new_session_is_findable_after_its_first_write(manager, db, connect):
    session = _stored_session(manager, connect(db), cart=["apple"])
    other = connect(db)
    found = manager.get(other, session.id)
    assert found is not None
    assert found["cart"] == ["apple"]


def test_new_session_with_user_is_indexed_on_first_write(manager, db, conn):
    session = manager.new(conn, user_id="alice")
    session["a"] = 1
    _commit(conn)
    assert get_container(conn).user_session_ids("alice") == [session.id]


# -- timeouts ---------------------------------------------------------------


def test_idle_timeout_ends_session_exactly_at_deadline(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    created = clock()
    clock.set(created + IDLE - EPSILON)
    assert manager.get(conn, session.id) is session
    conn.transaction_manager.abort()  # forget that touch
    clock.set(created + IDLE)
    assert manager.get(conn, session.id) is None


def test_use_extends_the_idle_deadline(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    created = clock()
    clock.set(created + 1000)
    assert manager.get(conn, session.id) is session
    _commit(conn)
    clock.set(created + 1000 + IDLE - EPSILON)
    assert manager.get(conn, session.id) is session


def test_max_lifetime_ends_a_session_in_use_exactly_at_deadline(db, conn, clock):
    manager = SessionManager(idle_timeout=1800, max_lifetime=3600, clock=clock)
    session = _stored_session(manager, conn)
    created = clock()
    for offset in (1000, 2000, 3000):
        clock.set(created + offset)
        assert manager.get(conn, session.id) is session
        _commit(conn)
    clock.set(created + 3600 - EPSILON)
    assert manager.get(conn, session.id) is session
    conn.transaction_manager.abort()
    clock.set(created + 3600)
    assert manager.get(conn, session.id) is None


def test_expired_session_is_never_returned_before_a_sweep(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    clock.advance(IDLE * 10)
    assert manager.get(conn, session.id) is None
    assert get_container(conn).get(session.id) is session  # still stored


def test_get_of_expired_session_writes_nothing(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    clock.advance(IDLE)
    before = db.storage.lastTransaction()
    assert manager.get(conn, session.id) is None
    assert conn._registered_objects == []
    _commit(conn)
    assert db.storage.lastTransaction() == before


@pytest.mark.parametrize(
    "bad_id",
    [None, 42, "", "x" * 43, "x" * 500, "../etc/passwd"],
    ids=["none", "int", "empty", "unknown", "long", "path"],
)
def test_get_of_bad_or_unknown_id_returns_none_and_writes_nothing(manager, db, conn, bad_id):
    _stored_session(manager, conn)
    before = db.storage.lastTransaction()
    assert manager.get(conn, bad_id) is None
    _commit(conn)
    assert db.storage.lastTransaction() == before


def test_get_on_empty_database_creates_nothing(manager, db, conn):
    before = db.storage.lastTransaction()
    assert manager.get(conn, "x" * 43) is None
    _commit(conn)
    assert db.storage.lastTransaction() == before
    assert ROOT_KEY not in conn.root()


# -- access resolution ---------------------------------------------------------


def test_reading_fresh_session_writes_nothing(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    before = db.storage.lastTransaction()
    clock.advance(RESOLUTION - EPSILON)
    found = manager.get(conn, session.id)
    assert found["a"] == 1
    assert conn._registered_objects == []
    _commit(conn)
    assert db.storage.lastTransaction() == before


def test_reading_after_resolution_writes_only_the_session_record(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    before = db.storage.lastTransaction()
    clock.advance(RESOLUTION)
    found = manager.get(conn, session.id)
    assert conn._registered_objects == [found]
    assert not found.rewritten  # a touch, nothing more
    _commit(conn)
    assert _oids_written_since(db.storage, before) == [found._p_oid]
    assert found.last_access == clock()


def test_a_touch_stores_the_session_as_it_is_in_memory(manager, db, connect, clock):
    """The access time is in the session's record, so a touch writes the
    record, in-place changes included; in a request, ``settle`` has decided
    about those first (``unsaved_changes``: tests/core/test_unsaved.py)."""
    conn = connect(db)
    session = _stored_session(manager, conn, cart=["apple"])
    clock.advance(RESOLUTION)
    found = manager.get(conn, session.id)
    found["cart"].append("pear")  # in place, without save_changes
    _commit(conn)
    reader = connect(db)
    assert manager.get(reader, session.id)["cart"] == ["apple", "pear"]


def test_access_time_survives_in_storage(manager, db, connect, clock):
    session = _stored_session(manager, connect(db))
    clock.advance(500)
    conn = connect(db)
    manager.get(conn, session.id)
    _commit(conn)
    assert manager.get(connect(db), session.id).last_access == clock()


# -- rotation, ownership, revocation ------------------------------------------


def test_rotate_gives_new_id_keeps_data_and_kills_old_id(manager, db, connect, clock):
    conn = connect(db)
    session = _stored_session(manager, conn, cart=["apple"])
    manager.set_user(session, "alice")
    _commit(conn)
    old_id = session.id

    clock.advance(100)
    manager.rotate(manager.get(conn, old_id))
    _commit(conn)
    new_id = session.id

    assert new_id != old_id
    reader = connect(db)
    assert manager.get(reader, old_id) is None
    rotated = manager.get(reader, new_id)
    assert rotated["cart"] == ["apple"]
    container = get_container(reader)
    assert container.user_session_ids("alice") == [new_id]
    deadline = rotated.deadline(IDLE, LIFETIME)
    assert (expiry_slot(deadline), new_id) in container.expiry
    assert len(container) == 1


def test_rotating_a_new_session_stores_nothing(manager, db, conn):
    session = manager.new(conn)
    old_id = session.id
    before = db.storage.lastTransaction()
    assert manager.rotate(session) is session
    assert session.id != old_id
    _commit(conn)
    assert db.storage.lastTransaction() == before


def test_rotated_new_session_is_stored_under_its_new_id(manager, db, conn):
    session = manager.new(conn)
    manager.rotate(session)
    session["a"] = 1
    _commit(conn)
    assert get_container(conn).get(session.id) is session


def test_set_user_and_revoke_user_end_every_session_of_that_user(manager, db, connect):
    conn = connect(db)
    alice = [_stored_session(manager, conn) for _ in range(3)]
    bob = _stored_session(manager, conn)
    for session in alice:
        manager.set_user(session, "alice")
    manager.set_user(bob, "bob")
    _commit(conn)

    assert manager.revoke_user(conn, "alice") == 3
    _commit(conn)

    reader = connect(db)
    assert all(manager.get(reader, s.id) is None for s in alice)
    assert manager.get(reader, bob.id) is not None
    container = get_container(reader)
    assert container.user_session_ids("alice") == []
    assert len(container) == 1


def test_revoke_user_without_sessions_returns_zero(manager, db, conn):
    assert manager.revoke_user(conn, "nobody") == 0
    _stored_session(manager, conn)
    assert manager.revoke_user(conn, "nobody") == 0


def test_set_user_on_new_session_stores_it(manager, db, connect):
    """Logging in writes no data, yet the login must outlive the request."""
    conn = connect(db)
    session = manager.new(conn)
    manager.set_user(session, "alice")
    _commit(conn)
    reader = connect(db)
    found = manager.get(reader, session.id)
    assert found is not None
    assert found.user_id == "alice"
    assert manager.revoke_user(reader, "alice") == 1


def test_set_user_none_on_new_session_stores_nothing(manager, db, conn):
    session = manager.new(conn)
    before = db.storage.lastTransaction()
    manager.set_user(session, None)
    _commit(conn)
    assert db.storage.lastTransaction() == before


def test_revoke_ends_one_session(manager, db, connect):
    conn = connect(db)
    doomed = _stored_session(manager, conn)
    kept = _stored_session(manager, conn)
    assert manager.revoke(conn, doomed.id) is True
    _commit(conn)
    reader = connect(db)
    assert manager.get(reader, doomed.id) is None
    assert manager.get(reader, kept.id) is not None
    assert len(get_container(reader)) == 1


def test_revoke_unknown_id_returns_false(manager, db, conn):
    assert manager.revoke(conn, "x" * 43) is False
    _stored_session(manager, conn)
    assert manager.revoke(conn, "x" * 43) is False


def test_invalidate_ends_a_stored_session(manager, db, connect):
    conn = connect(db)
    session = _stored_session(manager, conn)
    manager.invalidate(manager.get(conn, session.id))
    _commit(conn)
    assert manager.get(connect(db), session.id) is None
    assert len(get_container(conn)) == 0


def test_invalidated_new_session_is_never_stored(manager, db, conn):
    session = manager.new(conn)
    manager.invalidate(session)
    session["a"] = 1
    _commit(conn)
    assert get_container(conn, create=False) is None


# -- save_changes / forget_changes ---------------------------------------------


def test_save_changes_persists_nested_mutation(manager, db, connect):
    conn = connect(db)
    session = _stored_session(manager, conn, cart=["apple"])
    session["cart"].append("pear")
    manager.save_changes(session)
    _commit(conn)
    assert manager.get(connect(db), session.id)["cart"] == ["apple", "pear"]


def test_save_changes_stores_a_new_session(manager, db, connect):
    conn = connect(db)
    session = manager.new(conn)
    manager.save_changes(session)
    _commit(conn)
    assert manager.get(connect(db), session.id) is not None


def test_forget_changes_discards_the_whole_transaction(manager, db, connect):
    conn = connect(db)
    session = _stored_session(manager, conn, a=1)
    session["a"] = 2
    session["b"] = 3
    conn.root()["other"] = "application change"
    manager.forget_changes(session)
    assert session["a"] == 1
    assert "b" not in session
    assert "other" not in conn.root()
    _commit(conn)
    reader = connect(db)
    assert manager.get(reader, session.id).data() == {"a": 1}
    assert "other" not in reader.root()


def test_forget_changes_on_unstored_session_empties_it(manager, db, conn):
    session = manager.new(conn)
    session._v_attach = None  # as after invalidate: writes no longer store it
    session["a"] = 1
    manager.forget_changes(session)
    assert len(session) == 0


# -- multi-database ----------------------------------------------------------------


@pytest.fixture
def multi_db():
    database = open_db("memory://", sessions_uri="memory://")
    yield database
    database.close()


def test_new_sessions_live_in_the_sessions_database(multi_db, clock, connect):
    manager = SessionManager(database="sessions", clock=clock)
    conn = connect(multi_db)
    session = manager.new(conn)
    session["a"] = 1
    _commit(conn)
    assert session._p_jar.db().database_name == "sessions"
    assert ROOT_KEY not in conn.root()
    assert ROOT_KEY in conn.get_connection("sessions").root()
    assert manager.get(conn, session.id)["a"] == 1


# -- expiry -----------------------------------------------------------------


def _sessions(manager, conn, n, **data):
    made = []
    for _ in range(n):
        session = manager.new(conn)
        session.update(data or {"a": 1})
        made.append(session)
    _commit(conn)
    return made


def test_expire_removes_exactly_the_expired_sessions(manager, db, connect, clock):
    conn = connect(db)
    old = _sessions(manager, conn, 5)
    clock.advance(600)
    young = _sessions(manager, conn, 5)
    clock.advance(IDLE - 600 + EXPIRY_WIDTH)  # old ones are due, young ones are not

    assert manager.expire(conn) == 5

    reader = connect(db)
    container = get_container(reader)
    assert sorted(container.sessions.keys()) == sorted(s.id for s in young)
    assert len(container) == 5
    assert all(manager.get(reader, s.id) is not None for s in young)
    assert all(container.get(s.id) is None for s in old)


def test_expire_refiles_live_sessions_whose_entry_came_due(manager, db, connect, clock):
    conn = connect(db)
    created = clock()
    (session,) = _sessions(manager, conn, 1)
    clock.set(created + 1000)
    manager.get(conn, session.id)  # a touch: the entry filed at creation is now early
    _commit(conn)

    clock.set(created + IDLE + EXPIRY_WIDTH)
    assert manager.expire(conn) == 0

    container = get_container(connect(db))
    assert list(container.expiry) == [(expiry_slot(created + 1000 + IDLE), session.id)]
    assert container.get(session.id) is not None


def test_expire_removes_sessions_past_max_lifetime_despite_use(db, connect, clock):
    manager = SessionManager(idle_timeout=1800, max_lifetime=3600, clock=clock)
    conn = connect(db)
    created = clock()
    (session,) = _sessions(manager, conn, 1)
    for offset in (1000, 2000, 3000):
        clock.set(created + offset)
        manager.get(conn, session.id)
        _commit(conn)
    clock.set(created + 3600 + EXPIRY_WIDTH)
    assert manager.expire(conn) == 1
    assert len(get_container(connect(db))) == 0


def test_expire_drops_entries_left_by_revoke_and_rotate(manager, db, connect, clock):
    conn = connect(db)
    revoked, rotated = _sessions(manager, conn, 2)
    old_id = rotated.id
    clock.advance(100)
    manager.revoke(conn, revoked.id)
    manager.rotate(manager.get(conn, rotated.id))
    _commit(conn)
    assert len(get_container(conn).expiry) == 3  # two dangling, one current

    clock.advance(IDLE - 100 + EXPIRY_WIDTH)  # the creation entries are due
    assert manager.expire(conn) == 0

    container = get_container(connect(db))
    assert [entry[1] for entry in container.expiry] == [rotated.id]
    assert old_id != rotated.id
    assert list(container.sessions.keys()) == [rotated.id]


def test_expire_on_empty_database_writes_nothing(manager, db, conn, clock):
    before = db.storage.lastTransaction()
    clock.advance(10 * IDLE)
    assert manager.expire(conn) == 0
    assert db.storage.lastTransaction() == before
    assert get_container(conn, create=False) is None


def test_expire_before_anything_is_due_writes_nothing(manager, db, conn, clock):
    _sessions(manager, conn, 3)
    before = db.storage.lastTransaction()
    clock.advance(IDLE - EPSILON)
    assert manager.expire(conn) == 0
    assert db.storage.lastTransaction() == before


def test_expire_commits_in_batches_and_reports_progress(manager, db, connect, clock):
    conn = connect(db)
    _sessions(manager, conn, 50)
    clock.advance(IDLE + EXPIRY_WIDTH)
    before = db.storage.lastTransaction()
    reports: list[int] = []

    assert manager.expire(conn, batch_size=7, progress=reports.append) == 50

    assert reports == [7, 14, 21, 28, 35, 42, 49, 50]
    start = (u64(before) + 1).to_bytes(8, "big")
    transactions = list(db.storage.iterator(start))
    assert len(transactions) == 8
    assert len(get_container(connect(db))) == 0


def test_expire_cost_is_proportional_to_due_entries(tmp_path, connect, clock, load_counter):
    """2,000 sessions of which 10 are due: the sweep loads only what is due.

    The storage's load calls are counted by class, on a freshly opened
    database so that nothing is served from a connection cache.
    """
    from ZODB import DB
    from ZODB.FileStorage import FileStorage

    path = str(tmp_path / "Big.fs")
    manager = SessionManager(clock=clock)
    database = DB(FileStorage(path))
    conn = connect(database)
    due_ids = [s.id for s in _sessions(manager, conn, 10)]
    clock.advance(1000)
    for batch in (490, 500, 500, 500):
        _sessions(manager, conn, batch)
    conn.close()
    database.close()

    storage = FileStorage(path)
    counter = load_counter(storage)
    database = DB(storage)
    try:
        conn = connect(database)
        assert len(get_container(conn)) == 2000
        conn.transaction_manager.abort()
        conn.cacheMinimize()
        counter.reset()
        counter.active = True
        clock.advance(IDLE - 1000 + EXPIRY_WIDTH)
        assert manager.expire(conn) == 10
        counter.active = False
        loads = counter.by_class
        assert loads["Session"] == 10
        assert "Maximum" not in loads  # the access time is in the session's record
        assert loads["OOSet"] <= 2  # expiry index buckets: the due prefix only
        assert counter.total < 60, dict(loads)
        assert all(get_container(conn).get(i) is None for i in due_ids)
        assert len(get_container(conn)) == 1990
    finally:
        conn.transaction_manager.abort()
        conn.close()
        database.close()


@pytest.mark.parametrize(
    ("explicit", "database"),
    [(False, None), (True, None), (False, "sessions")],
    ids=["implicit-manager", "explicit-manager", "pending-in-the-sessions-database"],
)
def test_expire_refuses_to_discard_uncommitted_changes(request, connect, clock, explicit, database):
    """``expire()`` begins and commits its own batches; beginning would silently
    discard what the caller has not committed, so it raises instead, whatever
    the kind of transaction manager and whichever database holds the change."""
    manager = SessionManager(database=database, clock=clock)
    conn = connect(request.getfixturevalue("multi_db" if database else "db"), explicit=explicit)
    tm = conn.transaction_manager
    tm.begin()
    manager.new(conn)["a"] = "due"
    tm.commit()
    clock.advance(IDLE + EXPIRY_WIDTH)
    tm.begin()
    pending = manager.new(conn)
    pending["a"] = "not yet committed"

    with pytest.raises(UncommittedChanges, match="commit or abort") as refused:
        manager.expire(conn)

    assert isinstance(refused.value, AlreadyInTransaction)  # what explicit mode raises
    tm.commit()  # the pending change survived the refusal
    assert manager.expire(conn) == 1  # nothing pending: the due session is swept
    tm.begin()
    assert manager.get(conn, pending.id)["a"] == "not yet committed"


def test_expire_removes_due_sessions_from_the_sessions_database(multi_db, connect, clock):
    """The sweep reads each victim as current through the sessions database's
    connection, not the main one it was given (ZODB asserts the two match)."""
    manager = SessionManager(database="sessions", clock=clock)
    conn = connect(multi_db)
    (due,) = _sessions(manager, conn, 1)
    clock.advance(IDLE + EXPIRY_WIDTH)

    assert manager.expire(conn) == 1

    assert get_container(connect(multi_db).get_connection("sessions")).get(due.id) is None


def test_forget_changes_on_a_session_first_written_in_this_transaction(manager, db, connect):
    """The abort empties it, and a later write still stores it."""
    conn = connect(db)
    session = manager.new(conn)
    session["a"] = 1
    manager.forget_changes(session)
    assert len(session) == 0
    assert not session.is_stored
    conn.transaction_manager.commit()
    assert get_container(conn, create=False) is None

    session["b"] = 2
    conn.transaction_manager.commit()
    assert manager.get(connect(db), session.id).data() == {"b": 2}


def test_lifetime_equal_to_idle_timeout_is_allowed():
    assert SessionManager(idle_timeout=600, max_lifetime=600).max_lifetime == 600


# -- user ids -----------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["x" * (MAX_USER_ID_LENGTH + 1), "x" * 5_000_000, "", 42, b"alice"],
                         ids=["one-too-long", "five-million", "empty", "int", "bytes"])
def test_set_user_refuses_a_bad_user_id_and_changes_nothing(manager, db, connect, user_id):
    conn = connect(db)
    session = _stored_session(manager, conn)
    manager.set_user(session, "alice")
    _commit(conn)
    with pytest.raises(InvalidUserId) as info:
        manager.set_user(session, user_id)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ZodbSessionError)
    assert session.user_id == "alice"
    assert not session._p_changed
    assert get_container(conn).user_session_ids("alice") == [session.id]


def test_too_long_user_id_message_says_the_limit_and_not_the_whole_id(manager, db, conn):
    with pytest.raises(InvalidUserId) as info:
        manager.set_user(manager.new(conn), "y" * 10_000)
    assert str(MAX_USER_ID_LENGTH) in str(info.value)
    assert len(str(info.value)) < 300


def test_user_id_at_the_limit_is_accepted(manager, db, connect):
    session = manager.new(connect(db))
    manager.set_user(session, "u" * MAX_USER_ID_LENGTH)
    assert session.user_id == "u" * MAX_USER_ID_LENGTH


def test_new_refuses_a_too_long_user_id(manager, db, conn):
    with pytest.raises(InvalidUserId):
        manager.new(conn, user_id="z" * (MAX_USER_ID_LENGTH + 1))


# -- each session's own expiry ---------------------------------------------------


def test_own_idle_timeout_ends_the_session_exactly_then(manager, db, connect, clock):
    conn = connect(db)
    session = _stored_session(manager, conn)
    clock.advance(100)
    manager.set_expiry(session, 300)
    _commit(conn)
    assert manager.get_expiry_age(session) == 300
    start = clock()
    clock.set(start + 300 - EPSILON)
    assert manager.get(conn, session.id) is session
    conn.transaction_manager.abort()
    clock.set(start + 300)
    assert manager.get(connect(db), session.id) is None


def test_own_idle_timeout_outlives_max_lifetime_while_used(db, connect, clock):
    """"Remember me for a day" under an hour's lifetime: used every half hour, it stays."""
    manager = SessionManager(idle_timeout=1800, max_lifetime=3600, clock=clock)
    conn = connect(db)
    session = _stored_session(manager, conn)
    manager.set_expiry(session, 86400)
    _commit(conn)
    created = clock()
    for hour in range(1, 24):
        clock.set(created + hour * 3600)
        assert manager.get(conn, session.id) is session
        _commit(conn)
    clock.set(created + 86400)
    assert manager.get(conn, session.id) is None


@pytest.mark.parametrize("tz", [UTC, timezone(timedelta(hours=-5)), None], ids=["utc", "utc-5", "naive"])
def test_expiry_at_a_moment_ends_the_session_then_despite_use(manager, db, connect, clock, tz):
    conn = connect(db)
    session = _stored_session(manager, conn)
    moment = datetime.fromtimestamp(clock() + 5000, UTC)
    given = moment.replace(tzinfo=None) if tz is None else moment.astimezone(tz)
    manager.set_expiry(session, given)
    _commit(conn)
    assert manager.get_expiry_date(session) == moment
    assert manager.get_expiry_date(session).tzinfo is not None
    assert manager.get_expiry_age(session) == 5000
    start = clock()
    for offset in (1000, 2500, 4000, 5000 - EPSILON):
        clock.set(start + offset)
        assert manager.get(conn, session.id) is session  # past the 1800 s idle timeout
        _commit(conn)
    clock.set(start + 5000)
    assert manager.get(conn, session.id) is None


def test_expiry_as_a_timedelta_is_a_moment_from_now(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    manager.set_expiry(session, timedelta(hours=3))
    assert manager.get_expiry_date(session) == datetime.fromtimestamp(clock() + 3 * 3600, UTC)
    clock.advance(3600)
    assert manager.get_expiry_age(session) == 2 * 3600


def test_expiry_zero_lasts_until_the_browser_closes_with_the_default_timeouts(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    assert not manager.get_expire_at_browser_close(session)
    manager.set_expiry(session, 0)
    assert manager.get_expire_at_browser_close(session)
    assert manager.get_expiry_age(session) == IDLE
    assert manager.cookie_max_age(session) == "session"


def test_expiry_none_goes_back_to_the_managers_timeouts(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    manager.set_expiry(session, 60)
    manager.set_expiry(session, None)
    assert manager.get_expiry_age(session) == IDLE
    assert manager.cookie_max_age(session) is None
    assert not manager.get_expire_at_browser_close(session)


def test_setting_the_same_expiry_again_writes_nothing(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    assert manager.set_expiry(session, 600)
    _commit(conn)
    before = db.storage.lastTransaction()
    clock.advance(10)
    assert not manager.set_expiry(session, 600)
    assert not manager.set_expiry(session, 600.0)
    _commit(conn)
    assert db.storage.lastTransaction() == before
    assert not manager.set_expiry(manager.new(conn), None)  # a new session stays transient


@pytest.mark.parametrize("value", [-1, -0.5, math.nan, math.inf, "600", True, [600]],
                         ids=["negative", "negative-float", "nan", "inf", "string", "bool", "list"])
def test_set_expiry_refuses_nonsense(manager, db, conn, value):
    session = _stored_session(manager, conn)
    with pytest.raises(ValueError, match="set_expiry"):
        manager.set_expiry(session, value)
    assert session._expiry is None


def test_set_expiry_is_a_write_that_survives_a_fresh_connection(manager, db, connect, clock):
    conn = connect(db)
    session = _stored_session(manager, conn)
    manager.set_expiry(session, 7 * 86400)
    _commit(conn)
    other = connect(db)
    clock.advance(3 * 86400)
    assert manager.get_expiry_age(manager.get(other, session.id)) == 4 * 86400


def test_set_expiry_stores_a_new_session(manager, db, connect):
    conn = connect(db)
    session = manager.new(conn)
    manager.set_expiry(session, 0)
    _commit(conn)
    assert manager.get(connect(db), session.id) is not None


def test_expiry_verbs_are_the_managers_on_its_clock_and_timeouts(manager, db, connect, clock):
    """The policy lives in the manager: the persistent ``Session`` has no expiry verbs of its own."""
    conn = connect(db)
    stored = _stored_session(manager, conn)
    session = manager.get(connect(db), stored.id)
    assert not hasattr(session, "set_expiry")
    manager.set_expiry(session, 120)
    clock.advance(20)
    assert manager.get_expiry_age(session) == 100
    assert manager.get_expiry_date(session) == datetime.fromtimestamp(clock() + 100, UTC)
    assert not manager.get_expire_at_browser_close(session)


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), (0, "session"), (600, LIFETIME), (2 * LIFETIME, 2 * LIFETIME),
    (timedelta(seconds=90), 90),
], ids=["default", "browser", "idle-under-lifetime", "idle-over-lifetime", "moment"])
def test_cookie_max_age_covers_the_whole_possible_lifetime(manager, db, conn, clock, value, expected):
    session = _stored_session(manager, conn)
    manager.set_expiry(session, value)
    assert manager.cookie_max_age(session) == expected


def test_cookie_max_age_of_a_past_moment_is_one_second(manager, db, conn, clock):
    session = _stored_session(manager, conn)
    manager.set_expiry(session, timedelta(seconds=-5))
    assert manager.cookie_max_age(session) == 1
    assert manager.get_expiry_age(session) == 0


# -- a shortened deadline is swept on time ----------------------------------------


def _expiry_slots(conn, session_id: str) -> list[int]:
    return [slot for slot, sid in get_container(conn).expiry if sid == session_id]


@pytest.mark.parametrize("shorten", [
    lambda manager, session: manager.set_expiry(session, 60),
    lambda manager, session: manager.set_expiry(session, timedelta(seconds=60)),
    lambda manager, session: manager.set_expiry(
        session, datetime.fromtimestamp(manager.clock() + 60, UTC)),
], ids=["idle-seconds", "timedelta", "datetime"])
def test_shortened_lifetime_is_swept_on_time(manager, db, connect, clock, shorten):
    """The index's entry says 'not before IDLE'; a deadline moved earlier gets an earlier entry."""
    conn = connect(db)
    session = _stored_session(manager, conn)
    clock.advance(100)
    shorten(manager, session)
    _commit(conn)
    deadline = clock() + 60
    assert min(_expiry_slots(conn, session.id)) == expiry_slot(deadline)

    clock.set(deadline - EPSILON)
    assert manager.expire(conn) == 0
    clock.set(deadline + EXPIRY_WIDTH)  # long before the idle timeout (1800 s)
    assert manager.expire(conn) == 1
    assert get_container(connect(db)).get(session.id) is None


def test_shortened_lifetime_of_a_new_session_is_swept_on_time(manager, db, connect, clock):
    conn = connect(db)
    session = manager.new(conn)
    manager.set_expiry(session, 30)  # its first write
    _commit(conn)
    clock.advance(30 + EXPIRY_WIDTH)
    assert manager.expire(conn) == 1


def test_session_used_after_shortening_is_refiled_not_swept(manager, db, connect, clock):
    conn = connect(db)
    session = _stored_session(manager, conn)
    manager.set_expiry(session, 120)
    _commit(conn)
    clock.advance(100)
    assert manager.get(conn, session.id) is session  # a touch: now live until +220
    _commit(conn)
    clock.advance(20 + EXPIRY_WIDTH)
    assert manager.expire(conn) == 0
    assert min(_expiry_slots(conn, session.id)) == expiry_slot(clock() - 20 - EXPIRY_WIDTH + 120)
    clock.advance(100)
    assert manager.expire(conn) == 1


def test_lengthened_lifetime_is_not_swept_at_the_default_deadline(manager, db, connect, clock):
    conn = connect(db)
    session = _stored_session(manager, conn)
    manager.set_expiry(session, 4 * IDLE)
    _commit(conn)
    clock.advance(IDLE + EXPIRY_WIDTH)
    assert manager.expire(conn) == 0
    assert manager.get(connect(db), session.id) is not None
    clock.advance(3 * IDLE)
    assert manager.expire(conn) == 1


def test_forget_changes_forgets_a_change_made_in_place(manager, db, connect):
    """The abort reverts only registered objects; an unmarked nested change must go too."""
    conn = connect(db)
    stored = _stored_session(manager, conn, cart=["apple"])
    session = manager.get(conn, stored.id)
    session["cart"].append("pear")
    manager.forget_changes(session)
    assert session["cart"] == ["apple"]
