"""Sessions written by the two-record layout (access time in a separate ``Maximum``) keep working.

The records are written as that code wrote them: ``Session.__getstate__``
is put back to ``Persistent``'s for the commit, so the stored state holds
``_last_access`` (a reference to a ``zope.minmax.Maximum``) and no
``_accessed``. Then the current code loads, touches, changes, expires,
verifies and lists them; a write migrates a record to one. Also here: what
a session not in the cache costs to read, counted in storage loads.
"""

from __future__ import annotations

import json
import pickle
import time

import pytest
import transaction
from persistent import Persistent
from serverproc import run_cli
from ZODB import DB
from ZODB.FileStorage import FileStorage
from ZODB.utils import load_current
from zope.minmax import Maximum

from zodbsession.core.manager import SessionManager
from zodbsession.core.session import Session
from zodbsession.core.store import EXPIRY_SLOT_SECONDS, get_container
from zodbsession.ops.verify import verify
from zodbsession.testing import make_client

RESOLUTION = 60.0


def write_old_layout(monkeypatch, database: DB, manager: SessionManager, data: dict,
                     user_id: str | None = None) -> str:
    """Commit a session as the two-record layout stored it; returns its id."""
    with monkeypatch.context() as patch:
        patch.setattr(Session, "__getstate__", Persistent.__getstate__)
        tm = transaction.TransactionManager()
        conn = database.open(tm)
        try:
            session = manager.new(conn, user_id=user_id)
            session.user_id = user_id  # the old code stored it, None too
            session._last_access = Maximum(session.created)
            session.update(data)
            tm.commit()
            return session.id
        finally:
            conn.close()


def stored_state(database: DB, session_id: str) -> dict:
    """The session's record as the storage holds it (its state pickle, references as oids)."""
    tm = transaction.TransactionManager()
    conn = database.open(tm)
    try:
        oid = get_container(conn).sessions[session_id]._p_oid
        data, _serial = load_current(database.storage, oid)
    finally:
        tm.abort()
        conn.close()
    unpickler = pickle.Unpickler(_bytes_io(data))
    unpickler.persistent_load = lambda reference: reference
    unpickler.load()  # the class
    state: dict = unpickler.load()
    return state


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


@pytest.fixture
def file_db(tmp_path):
    database = DB(FileStorage(str(tmp_path / "Data.fs")))
    yield database
    database.close()


def _connect(database: DB):
    return database.open(transaction.TransactionManager())


def test_an_old_record_is_stored_the_old_way(monkeypatch, file_db, manager):
    session_id = write_old_layout(monkeypatch, file_db, manager, {"a": 1})
    state = stored_state(file_db, session_id)
    assert "_last_access" in state and "_accessed" not in state


def test_an_old_session_is_found_with_its_access_time_and_data(monkeypatch, file_db, manager, clock):
    session_id = write_old_layout(monkeypatch, file_db, manager, {"a": 1})
    conn = _connect(file_db)
    session = manager.get(conn, session_id)
    assert session["a"] == 1
    assert session.last_access == clock()
    assert manager.is_live(session)


def test_a_touch_migrates_an_old_record_keeping_the_later_time(monkeypatch, file_db, manager, clock):
    session_id = write_old_layout(monkeypatch, file_db, manager, {"a": 1})
    clock.advance(RESOLUTION)
    conn = _connect(file_db)
    assert manager.get(conn, session_id).last_access == clock()
    conn.transaction_manager.commit()
    state = stored_state(file_db, session_id)
    assert "_last_access" not in state and state["_accessed"] == clock()
    assert manager.get(_connect(file_db), session_id).last_access == clock()


def test_a_data_write_migrates_an_old_record_and_keeps_its_old_access_time(
        monkeypatch, file_db, manager, clock):
    session_id = write_old_layout(monkeypatch, file_db, manager, {"a": 1})
    created = clock()
    clock.advance(RESOLUTION / 2)  # within the resolution: no touch
    conn = _connect(file_db)
    manager.get(conn, session_id)["b"] = 2
    conn.transaction_manager.commit()
    state = stored_state(file_db, session_id)
    assert "_last_access" not in state and state["_accessed"] == created
    assert manager.get(_connect(file_db), session_id).data() == {"a": 1, "b": 2}


@pytest.mark.parametrize("touch_first", [True, False], ids=["touch-first", "write-first"])
def test_a_touch_and_a_data_write_of_one_old_record_both_survive(monkeypatch, file_db, manager, clock,
                                                                   touch_first):
    """Both migrate it from one snapshot: the merge keeps the data and the later time."""
    session_id = write_old_layout(monkeypatch, file_db, manager, {"a": 1})
    writer = _connect(file_db)
    manager.get(writer, session_id)["b"] = 2  # no touch: within the resolution
    clock.advance(RESOLUTION)
    toucher = _connect(file_db)
    manager.get(toucher, session_id)  # a touch
    for conn in (toucher, writer) if touch_first else (writer, toucher):
        conn.transaction_manager.commit()
    session = manager.get(_connect(file_db), session_id)
    assert session.data() == {"a": 1, "b": 2}
    assert session.last_access == clock()
    assert "_last_access" not in stored_state(file_db, session_id)


def test_an_old_session_expires_and_the_database_verifies_sound(monkeypatch, file_db, manager, clock):
    old_id = write_old_layout(monkeypatch, file_db, manager, {"a": 1}, user_id="alice")
    clock.advance(manager.idle_timeout / 2)
    kept_id = write_old_layout(monkeypatch, file_db, manager, {"b": 1})
    assert verify(file_db).sound
    clock.advance(manager.idle_timeout / 2 + EXPIRY_SLOT_SECONDS)
    conn = _connect(file_db)
    assert manager.get(conn, old_id) is None
    assert manager.expire(conn) == 1
    container = get_container(_connect(file_db))
    assert container.get(old_id) is None and container.get(kept_id) is not None
    assert container.user_session_ids("alice") == []
    report = verify(file_db)
    assert report.sound, report.problems


def test_the_maintenance_commands_read_old_records(monkeypatch, tmp_path):
    """``ls``, ``show``, ``stats`` and ``expire`` through the real entry point."""
    path = tmp_path / "Data.fs"
    database = DB(FileStorage(str(path)))
    now = time.time()
    try:
        live = write_old_layout(monkeypatch, database, SessionManager(), {"n": 1}, user_id="alice")
        gone = write_old_layout(monkeypatch, database, SessionManager(clock=lambda: now - 86400), {"n": 2})
    finally:
        database.close()
    env = {"ZODBSESSION_STORAGE_URI": f"file://{path}"}
    listed = [json.loads(line) for line in run_cli("ls", "--json", env=env, cwd=tmp_path).stdout.splitlines()]
    assert {entry["id"] for entry in listed} == {live}  # ls lists the live ones
    shown = run_cli("show", live, "--json", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["last_access"] == pytest.approx(now, abs=60)
    stats = json.loads(run_cli("stats", "--json", env=env, cwd=tmp_path).stdout)
    assert (stats["live_sessions"], stats["expired_sessions"]) == (1, 1)
    expired = run_cli("expire", env=env, cwd=tmp_path)
    assert "expired 1 session(s)" in expired.stdout, expired.stderr
    assert run_cli("show", gone, env=env, cwd=tmp_path).returncode != 0
    verified = run_cli("verify", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr


# -- loads per read of a session not in the cache ------------------------------------


def _counter_app(environ, start_response):
    session = environ["zodbsession.session"]
    if environ["REQUEST_METHOD"] == "POST":
        session["n"] = session.get("n", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session.get("n", 0)).encode()]


@pytest.mark.parametrize("old_layout", [False, True], ids=["new-record", "old-record"])
def test_a_read_of_a_session_not_in_the_cache_loads_one_session_record(
        monkeypatch, tmp_path, manager, clock, load_counter, old_layout):
    storage = FileStorage(str(tmp_path / "Data.fs"))
    counter = load_counter(storage)
    database = DB(storage)
    try:
        client = make_client(_counter_app, database, manager=manager)
        client.post("/")
        if old_layout:
            client.session_id = write_old_layout(monkeypatch, database, manager, {"n": 1})
        client.get("/")  # the container and the tree in the cache
        database.cacheMinimize()  # every object a ghost: the session must be loaded
        counter.reset()
        counter.active = True
        assert client.get("/").text == "1"
        counter.active = False
        session_records = counter.by_class["Session"] + counter.by_class["Maximum"]
        assert session_records == (2 if old_layout else 1), dict(counter.by_class)
        assert counter.by_class["Session"] == 1
    finally:
        database.close()
