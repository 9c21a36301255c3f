"""Limits: a cap on stored sessions, a cap on one session's size, and values that cannot be stored.

Each refusal is clean: the request's transaction aborts, the answer is the
documented status, the log says why (naming the key of an unpicklable
value), and the session keeps the state it had before the request.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import transaction
from persistent.list import PersistentList
from wsgikit import wsgi_call as call
from ZODB import DB

from zodbsession import SessionManager, SessionPublisher
from zodbsession.core.errors import (
    ConfigError,
    SessionLimitReached,
    SessionTooLarge,
    UnstorableSessionValue,
)
from zodbsession.core.observe import Observer
from zodbsession.core.store import ROOT_KEY
from zodbsession.testing import ManualClock

COOKIE = "zodbsession"


def issued(headers: dict[str, str]) -> str | None:
    value = headers.get("Set-Cookie")
    return value.split(";")[0].partition("=")[2] if value else None


def stored(db: DB) -> dict[str, dict[str, Any]]:
    """{session_id -> data} of every committed session."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        container = conn.root().get(ROOT_KEY)
        return {} if container is None else {k: s.data() for k, s in container.sessions.items()}
    finally:
        tm.abort()
        conn.close()


class Outcomes(Observer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[str] = []

    def request_finished(self, outcome, attempts, commit_seconds) -> None:
        with self.lock:
            self.seen.append(outcome)


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["max_sessions", "max_session_bytes"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "10"], ids=repr)
def test_bad_limits_raise_config_error_naming_the_key(name, value):
    with pytest.raises(ConfigError, match=f"^{name}: ") as info:
        SessionManager(**{name: value})
    assert info.value.key == name


def test_defaults_are_no_session_cap_and_64_kib_per_session():
    manager = SessionManager()
    assert (manager.max_sessions, manager.max_session_bytes) == (0, 65536)


# -- the session cap ---------------------------------------------------------------


def test_new_session_over_a_cap_of_users_sessions_evicts_the_user_idle_longest(file_db):
    """Every stored session is a logged-in user's: the least recently used one goes, not the newcomer."""
    clock = ManualClock()
    manager = SessionManager(max_sessions=3, clock=clock)
    ids = []
    for n in range(3):
        with file_db.transaction() as conn:
            session = manager.new(conn, user_id=f"user-{n}")
            session["n"] = n
            ids.append(session.id)
        clock.advance(manager.access_resolution + 20)  # each in an expiry slot of its own
    with file_db.transaction() as conn:
        manager.get(conn, ids[0])["n"] = 10  # user-0 is back: user-1 is now idle longest
    with file_db.transaction() as conn:
        manager.new(conn)["n"] = 99
    kept = stored(file_db)
    assert ids[1] not in kept
    assert sorted(v["n"] for v in kept.values()) == [2, 10, 99]


def test_new_session_with_nothing_to_evict_is_refused_at_its_first_write(file_db):
    """A store at the cap whose expiry index names no session (emptied by hand): refused, untouched."""
    manager = SessionManager(max_sessions=3)
    with file_db.transaction() as conn:
        for n in range(3):
            manager.new(conn, user_id=f"user-{n}")["n"] = n
        manager.container(conn).expiry.clear()
        refused = manager.new(conn)
        with pytest.raises(SessionLimitReached, match="3 sessions are stored and max_sessions is 3"):
            refused["n"] = 99
        assert not refused.is_stored and dict(refused) == {}
    assert len(stored(file_db)) == 3


def test_at_the_cap_the_least_recently_used_anonymous_session_is_evicted(file_db):
    clock = ManualClock()
    manager = SessionManager(max_sessions=3, clock=clock)
    with file_db.transaction() as conn:
        users = manager.new(conn, user_id="alice")
        users["n"] = 0
        oldest = manager.new(conn)
        oldest["n"] = 1
    clock.advance(manager.access_resolution + 20)
    with file_db.transaction() as conn:
        newer = manager.new(conn)
        newer["n"] = 2
    with file_db.transaction() as conn:
        manager.new(conn)["n"] = 3  # at the cap: the oldest anonymous one goes
    kept = {v["n"] for v in stored(file_db).values()}
    assert kept == {0, 2, 3}, "alice's session is never evicted, the older anonymous one is"
    assert len(stored(file_db)) == 3


def test_a_cap_of_zero_is_no_cap(file_db):
    manager = SessionManager(max_sessions=0)
    with file_db.transaction() as conn:
        for n in range(50):
            manager.new(conn)["n"] = n
    assert len(stored(file_db)) == 50


def test_a_login_over_a_cap_of_users_sessions_evicts_the_other_user(file_db):
    manager = SessionManager(max_sessions=1)
    with file_db.transaction() as conn:
        manager.new(conn, user_id="bob")["n"] = 1
    with file_db.transaction() as conn:
        manager.set_user(manager.new(conn), "alice")
    assert [v for v in stored(file_db).values()] == [{}]
    with file_db.transaction() as conn:
        (session,) = manager.container(conn).sessions.values()
        assert session.user_id == "alice"


def flood_app(write: bool):
    def app(environ, start_response):
        session = environ["zodbsession.session"]
        if write:
            session["visits"] = session.get("visits", 0) + 1
        else:
            session.get("visits")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    return app


def test_flood_of_cookieless_reads_stores_nothing(file_db):
    """10,000 requests from a client that never keeps cookies, on an app that only reads."""
    publisher = SessionPublisher(flood_app(write=False), file_db)
    before = file_db.storage.lastTransaction()
    size = file_db.storage.getSize()
    for _ in range(10_000):
        status, headers, _body = call(publisher)
        assert status == "200 OK" and "Set-Cookie" not in headers
    assert file_db.storage.lastTransaction() == before
    assert file_db.storage.getSize() == size
    assert stored(file_db) == {}


def login_app(environ, start_response):
    """POST /login/<user> logs the request's session in; anything else writes a visit."""
    session = environ["zodbsession.session"]
    if environ["PATH_INFO"].startswith("/login/"):
        session.login(environ["PATH_INFO"].rsplit("/", 1)[1])
    session["visits"] = session.get("visits", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_a_flood_of_cookieless_writes_cannot_lock_out_a_new_visitor_or_a_login(file_db, caplog):
    """10,000 cookieless POSTs from one client against a cap of 100: the store stays at the
    cap, the flood only evicts its own anonymous sessions, and a new visitor, a login, and
    the logged-in user's next requests all succeed while it goes on."""
    outcomes = Outcomes()
    manager = SessionManager(max_sessions=100)
    manager.observers.subscribe(outcomes)
    publisher = SessionPublisher(login_app, file_db, manager=manager)
    caplog.set_level(logging.ERROR)
    status, headers, _ = call(publisher, "/login/alice", method="POST")
    assert status == "200 OK"
    alice = issued(headers)
    statuses: dict[str, int] = {}
    for n in range(10_000):
        status, _headers, _body = call(publisher, method="POST")
        statuses[status] = statuses.get(status, 0) + 1
        if n == 5_000:
            assert call(publisher, cookie=f"{COOKIE}={alice}", method="POST")[0] == "200 OK"
    assert statuses == {"200 OK": 10_000}
    assert len(stored(file_db)) == 100
    assert outcomes.seen.count("session_limit") == 0
    # A new visitor, a new login, and alice (never evicted) are all served.
    status, headers, _ = call(publisher, method="POST")
    assert status == "200 OK" and issued(headers)
    status, headers, _ = call(publisher, "/login/bob", method="POST")
    assert status == "200 OK"
    bob = issued(headers)
    assert stored(file_db)[alice] == {"visits": 2}
    assert stored(file_db)[bob] == {"visits": 1}


# -- the size limit ----------------------------------------------------------------


def sized_app(environ, start_response):
    """POST /set/<key>/<size> stores a string of <size> characters under <key>."""
    session = environ["zodbsession.session"]
    _, verb, key, size = environ["PATH_INFO"].split("/")
    if verb == "set":
        session[key] = "x" * int(size)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(sorted(session.keys())).encode()]


def test_session_over_the_size_limit_is_aborted_and_keeps_its_previous_state(file_db, caplog):
    outcomes = Outcomes()
    manager = SessionManager(max_session_bytes=4096)
    manager.observers.subscribe(outcomes)
    publisher = SessionPublisher(sized_app, file_db, manager=manager)
    status, headers, _ = call(publisher, "/set/small/100", method="POST")
    session_id = issued(headers)
    assert status == "200 OK"
    before = file_db.storage.lastTransaction()
    status, headers, body = call(publisher, "/set/big/5000", method="POST",
                                 cookie=f"{COOKIE}={session_id}")
    assert (status, body) == ("500 Internal Server Error", b"internal server error")
    assert "Set-Cookie" not in headers
    assert file_db.storage.lastTransaction() == before  # nothing partial stored
    assert stored(file_db) == {session_id: {"small": "x" * 100}}
    assert outcomes.seen == ["committed", "aborted_invalid"]
    [record] = [r for r in caplog.records if "max_session_bytes" in r.getMessage()]
    assert record.levelname == "ERROR"
    assert "POST /set/big/5000: aborted: the session's data would take" in record.getMessage()
    assert "over max_session_bytes (4096)" in record.getMessage()
    # The session works on: a smaller write is stored.
    status, _, _ = call(publisher, "/set/medium/1000", method="POST", cookie=f"{COOKIE}={session_id}")
    assert status == "200 OK"
    assert set(stored(file_db)[session_id]) == {"small", "medium"}


def test_a_new_session_over_the_limit_is_not_stored_at_all(file_db):
    publisher = SessionPublisher(sized_app, file_db, manager=SessionManager(max_session_bytes=1000))
    status, headers, _ = call(publisher, "/set/big/2000", method="POST")
    assert status == "500 Internal Server Error" and "Set-Cookie" not in headers
    assert stored(file_db) == {}


def test_the_size_limit_is_inclusive_and_measures_the_pickled_data(file_db):
    manager = SessionManager(max_session_bytes=0)
    with file_db.transaction() as conn:
        session = manager.new(conn)
        session["text"] = "x" * 3000
        size = manager.check_storable(session)
    assert 3000 < size < 3050  # the pickled data mapping, with its key
    with file_db.transaction() as conn:
        session = manager.get(conn, session.id)
        record = file_db.storage.load(session._p_oid)[0]
        # The whole record is the data plus about 150 bytes of bookkeeping.
        assert size < len(record) < size + 300, (len(record), size)
        assert SessionManager(max_session_bytes=size).check_storable(session) == size
        with pytest.raises(SessionTooLarge) as info:
            SessionManager(max_session_bytes=size - 1).check_storable(session)
        assert (info.value.size, info.value.limit) == (size, size - 1)
        assert isinstance(info.value, ValueError)


def test_measuring_has_no_side_effects_and_counts_persistent_subobjects_as_references(file_db):
    """A new PersistentList in the data gets no oid from the check; its content is its own record."""
    manager = SessionManager(max_session_bytes=2000)
    tm = transaction.TransactionManager()
    conn = file_db.open(tm)
    try:
        session = manager.new(conn)
        big = PersistentList(["y" * 10_000])
        session["cart"] = big
        added = dict(conn._added)
        size = manager.check_storable(session)
        assert size < 100  # {"cart": <a reference>}
        assert (big._p_oid, big._p_jar) == (None, None)
        assert conn._added == added
        tm.commit()
    finally:
        conn.close()
    assert stored(file_db)[session.id]["cart"] == ["y" * 10_000]


def test_a_limit_of_zero_is_no_limit(file_db):
    publisher = SessionPublisher(sized_app, file_db, manager=SessionManager(max_session_bytes=0))
    status, headers, _ = call(publisher, "/set/huge/1000000", method="POST")
    assert status == "200 OK"
    assert len(stored(file_db)[issued(headers)]["huge"]) == 1_000_000


def test_reading_a_session_over_a_lowered_limit_still_works(file_db):
    """Only a session written in the request is checked: lowering the limit strands no one."""
    status, headers, _ = call(SessionPublisher(sized_app, file_db, manager=SessionManager(
        max_session_bytes=0)), "/set/big/50000", method="POST")
    session_id = issued(headers)
    strict = SessionPublisher(sized_app, file_db, manager=SessionManager(max_session_bytes=1000))
    status, _, body = call(strict, "/get/big/0", cookie=f"{COOKIE}={session_id}")
    assert (status, body) == ("200 OK", b"['big']")
    status, _, _ = call(strict, "/set/big/10", method="POST", cookie=f"{COOKIE}={session_id}")
    assert status == "200 OK"  # writing it back under the limit is allowed


# -- values that cannot be stored ------------------------------------------------------


def unstorable_values() -> dict[str, Any]:
    return {
        "lambda": lambda: None,
        "lock": threading.Lock(),
        "open-file": open(__file__, encoding="utf-8"),  # noqa: SIM115 (closed by the test)
        "nested-lock": {"deep": [1, 2, threading.RLock()]},
        "generator": (n for n in range(3)),
    }


@pytest.mark.parametrize("kind", list(unstorable_values()))
def test_unpicklable_value_aborts_naming_its_key_and_keeps_the_previous_state(file_db, caplog, kind):
    value = unstorable_values()[kind]
    outcomes = Outcomes()
    manager = SessionManager()
    manager.observers.subscribe(outcomes)

    def app(environ, start_response):
        session = environ["zodbsession.session"]
        if environ["PATH_INFO"] == "/first":
            session["kept"] = "before"
        else:
            session["kept"] = "after"
            session["culprit_key"] = value
            session["fine"] = 3
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    publisher = SessionPublisher(app, file_db, manager=manager)
    try:
        session_id = issued(call(publisher, "/first", method="POST")[1])
        status, headers, body = call(publisher, "/second", method="POST",
                                     cookie=f"{COOKIE}={session_id}")
    finally:
        if hasattr(value, "close"):
            value.close()
    assert (status, body) == ("500 Internal Server Error", b"internal server error")
    assert stored(file_db) == {session_id: {"kept": "before"}}
    assert outcomes.seen == ["committed", "aborted_invalid"]
    [line] = [r.getMessage() for r in caplog.records if "cannot be stored" in r.getMessage()]
    assert "POST /second: aborted: the value under session key 'culprit_key' cannot be stored" in line
    assert "Traceback" not in line


def test_check_storable_names_the_key_and_is_a_type_error(file_db):
    manager = SessionManager()
    with file_db.transaction() as conn:
        session = manager.new(conn)
        session["ok"] = 1
        session["bad"] = threading.Lock()
        with pytest.raises(UnstorableSessionValue) as info:
            manager.check_storable(session)
        assert info.value.key == "bad"
        assert isinstance(info.value, TypeError)
        assert "_thread.lock" in str(info.value)
        assert info.value.__cause__ is not None
        del session["bad"]


def test_a_failed_measure_leaves_the_next_one_exact(file_db):
    """The pickler is reused per thread: a failure half-way must leave nothing behind."""
    manager = SessionManager()
    with file_db.transaction() as conn:
        session = manager.new(conn)
        session["text"] = "x" * 500
        size = manager.check_storable(session)
        session["bad"] = [1, 2, threading.Lock()]
        with pytest.raises(UnstorableSessionValue):
            manager.check_storable(session)
        del session["bad"]
        assert manager.check_storable(session) == size
