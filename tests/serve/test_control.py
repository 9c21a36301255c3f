"""The control socket: maintenance commands run inside the process that holds the database.

A real FileStorage in a temporary directory, a real waitress listener on a
Unix socket, and the real client; writer threads commit to the same
database while the commands run, as a serving process would.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest
import transaction
from ZODB import DB
from ZODB.FileStorage import FileStorage
from ZODB.POSException import ConflictError

from zodbsession.config import StorageSettings
from zodbsession.core.errors import SessionNotFound
from zodbsession.core.manager import SessionManager
from zodbsession.ops import maintenance
from zodbsession.serve.control import ControlError, ControlListener, answers, call, server_socket, socket_path


@pytest.fixture
def served(tmp_path: Path):
    """A database, its manager and a control listener on it; yields (db, manager, path)."""
    storage_path = str(tmp_path / "Data.fs")
    db = DB(FileStorage(storage_path))
    manager = SessionManager()
    with db.transaction() as conn:
        manager.container(conn)
    listener = ControlListener(db, manager, socket_path(storage_path)).start()
    try:
        yield db, manager, listener.path
    finally:
        listener.stop()
        db.close()


@pytest.mark.parametrize("uri, sessions_uri, expected", [
    ("file://var/Data.fs", "", "var/Data.fs.control"),
    ("file://var/Data.fs", "file://var/Sessions.fs", "var/Data.fs.control"),
    ("zeo://localhost:8100", "file://var/Sessions.fs", "var/Sessions.fs.control"),
    ("memory://", "file://var/Sessions.fs?pack_keep_old=false", "var/Sessions.fs.control"),
    ("zeo://localhost:8100", "", None),
    ("memory://", "zeo://localhost:8100?storage=sessions", None),
], ids=["main-file", "both-files", "zeo-and-file", "memory-and-file", "zeo-only", "no-file"])
def test_the_server_listens_beside_the_first_file_it_holds(uri, sessions_uri, expected) -> None:
    """``serve`` and the command line both ask ``server_socket``; the main file comes first."""
    assert server_socket(StorageSettings(uri=uri, sessions_uri=sessions_uri)) == expected


def _make_sessions(db: DB, manager: SessionManager, count: int, user: str | None = None) -> list[str]:
    ids = []
    with db.transaction() as conn:
        for _ in range(count):
            session = manager.new(conn, user_id=user)
            session["n"] = 0
            ids.append(session.id)
    return ids


def test_the_socket_is_only_for_the_servers_own_user(served) -> None:
    _db, _manager, path = served
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert answers(path)


def test_every_command_answers_what_the_offline_function_returns(served) -> None:
    db, manager, path = served
    ids = _make_sessions(db, manager, 3, user="ann")
    assert call(path, "stats")["live_sessions"] == maintenance.stats(db, manager).live_sessions == 3
    listed = call(path, "ls", user="ann")
    assert sorted(info["id"] for info in listed) == sorted(ids)
    assert call(path, "show", session_id=ids[0])["data"] == {"n": "0"}
    assert call(path, "expire") == {"removed": 0}
    assert call(path, "revoke", session_id=ids[0]) == {"revoked": 1}
    assert call(path, "revoke", user="ann") == {"revoked": 2}
    assert call(path, "pack")["database"]
    assert call(path, "stats")["stored_sessions"] == 0


def test_an_unknown_session_is_not_found_and_nothing_is_written(served) -> None:
    db, _manager, path = served
    before = db.storage.getSize()
    with pytest.raises(SessionNotFound):
        call(path, "show", session_id="x" * 43)
    assert call(path, "revoke", session_id="x" * 43) == {"revoked": 0}
    assert db.storage.getSize() == before


@pytest.mark.parametrize("args, why", [
    ({"limit": 0}, "limit must be a whole number"),
    ({"limit": "ten"}, "limit must be a whole number"),
    ({"user": ["a"]}, "user must be a string"),
], ids=["zero-limit", "text-limit", "list-user"])
def test_bad_arguments_are_refused_in_one_line(served, args, why) -> None:
    _db, _manager, path = served
    with pytest.raises(ControlError, match=why):
        call(path, "ls", **args)


def test_an_unknown_command_is_refused_with_the_list_of_commands(served) -> None:
    _db, _manager, path = served
    with pytest.raises(ControlError, match="commands: expire, pack, stats"):
        call(path, "drop-everything")


def test_a_hostile_body_gets_400_not_a_traceback(served) -> None:
    _db, _manager, path = served
    for body in (b"[" * 60_000, b"\xff\xfe", b'"a string"'):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b"POST /ls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"Traceback" not in answer


def test_a_second_listener_on_a_live_socket_is_refused(served) -> None:
    db, manager, path = served
    with pytest.raises(ControlError, match="already answers"):
        ControlListener(db, manager, path).start()


def test_a_stale_socket_file_of_a_killed_server_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "Data.fs.control")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: what SIGKILL leaves
    db = DB(None)
    try:
        listener = ControlListener(db, SessionManager(), path).start()
        try:
            assert call(path, "stats")["stored_sessions"] == 0
        finally:
            listener.stop()
    finally:
        db.close()
    assert not os.path.exists(path)


def test_commands_run_live_under_write_load_and_lose_no_write(served) -> None:
    """Writers increment their own sessions while revoke, expire, stats and pack run."""
    db, manager, path = served
    writers = _make_sessions(db, manager, 4)
    doomed = _make_sessions(db, manager, 20, user="mallory")
    acknowledged = dict.fromkeys(writers, 0)
    stop = threading.Event()

    def write(session_id: str) -> None:
        tm = transaction.TransactionManager(explicit=True)
        while not stop.is_set():
            conn = db.open(transaction_manager=tm)
            try:
                tm.begin()
                session = manager.get(conn, session_id)
                session["n"] += 1
                tm.commit()
                acknowledged[session_id] += 1
            except ConflictError:
                tm.abort()
            finally:
                conn.close()
            # A busy site, not a loop with no pause: FileStorage's pack copies
            # what was committed meanwhile until it catches up, and writers that
            # never pause would keep it copying.
            stop.wait(0.005)

    threads = [threading.Thread(target=write, args=(i,)) for i in writers]
    for thread in threads:
        thread.start()
    try:
        assert call(path, "revoke", user="mallory") == {"revoked": len(doomed)}
        assert call(path, "expire") == {"removed": 0}
        assert call(path, "stats")["live_sessions"] == len(writers)
        call(path, "pack")
        while min(acknowledged.values()) < 20:
            stop.wait(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    with db.transaction() as conn:
        assert {i: manager.get(conn, i)["n"] for i in writers} == acknowledged
        assert all(manager.get(conn, i) is None for i in doomed)
