"""The ASGI door's thread hops, counted: a cached read in the loop, a write's one hop, ZEO's hops kept.

Each test serves a small ASGI app behind ``SessionMiddleware`` on a real
uvicorn and counts ``middleware.threads.hops`` around one request at a time
(every hop of a request happens before its response is sent, so the count is
exact once the client has its answer). Storages are real: the
``GroupCommitFileStorage`` that ``file://`` opens, a stock ``FileStorage``, a
MappingStorage, a ZEO server in this process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import transaction
import ZEO
from asgikit import http_client, serving
from ZODB import DB
from ZODB.DemoStorage import DemoStorage
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage

from zodbsession import SessionManager
from zodbsession.core.db import SESSIONS_DATABASE, open_db
from zodbsession.core.groupcommit import GroupCommitFileStorage
from zodbsession.core.registry import before_commit
from zodbsession.web.asgi import SessionMiddleware
from zodbsession.web.asgi.inline import LoadOnLoop, guard_connection, loop_safe, steps_on_loop


async def counter_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """GET reads the session's count; POST adds one; /in-place appends to a list without marking it."""
    await receive()
    session = scope["zodbsession.session"]
    path = scope["path"]
    if path == "/hooked":
        before_commit(lambda: None)
    if scope["method"] == "POST":
        session["count"] = session.get("count", 0) + 1
    elif path == "/in-place":
        session.setdefault("seen", [])  # a first visit assigns (a write)
        session["seen"].append(1)  # later ones change the list in place
    body = json.dumps({"count": session.get("count", 0), "seen": len(session.get("seen", []))}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


class Door:
    """One middleware on *db*, served by uvicorn, with one client whose cookie jar keeps its session."""

    def __init__(self, db: DB, **options: Any) -> None:
        self.db = db
        options.setdefault("manager", SessionManager(unsaved_changes="save"))
        self.middleware = SessionMiddleware(counter_app, db, **options)

    def hops(self, method: str, path: str = "/") -> tuple[int, dict[str, int]]:
        """The thread hops one request took, and its answer."""
        before = self.middleware.threads.hops
        response = self.client.request(method, path)
        assert response.status_code == 200, response.text
        return self.middleware.threads.hops - before, response.json()

    def __enter__(self) -> Door:
        self._serving = serving(self.middleware)
        self.server = self._serving.__enter__()
        self.client = http_client(self.server)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self._serving.__exit__(*exc)
        self.middleware.close()


@pytest.fixture
def group_commit_db(tmp_path: Path) -> Iterator[DB]:
    """What ``file://`` opens: a ``GroupCommitFileStorage`` (durable, fsync="always")."""
    db = DB(GroupCommitFileStorage(str(tmp_path / "Data.fs")))
    yield db
    db.close()


def test_a_cached_read_takes_no_thread_hop_and_a_write_one_on_the_group_commit_file_storage(
        group_commit_db):
    with Door(group_commit_db) as door:
        assert door.middleware.inline
        assert door.hops("POST") == (1, {"count": 1, "seen": 0})  # a new session: its commit
        assert door.hops("GET") == (0, {"count": 1, "seen": 0})
        assert door.hops("GET") == (0, {"count": 1, "seen": 0})
        assert door.hops("POST") == (1, {"count": 2, "seen": 0})
        assert door.hops("GET") == (0, {"count": 2, "seen": 0})


def test_a_session_not_in_the_cache_is_loaded_in_a_thread_then_read_in_the_loop(group_commit_db):
    with Door(group_commit_db) as door:
        door.hops("POST")
        group_commit_db.cacheMinimize()  # every pooled connection's objects become ghosts
        assert door.hops("GET") == (1, {"count": 1, "seen": 0})  # the loads, in one hop
        assert door.hops("GET") == (0, {"count": 1, "seen": 0})
        group_commit_db.cacheMinimize()
        assert door.hops("POST") == (2, {"count": 2, "seen": 0})  # the loads, then the commit


def test_a_change_made_in_place_is_committed_in_a_thread_and_kept(group_commit_db):
    with Door(group_commit_db) as door:
        assert door.hops("GET", "/in-place") == (1, {"count": 0, "seen": 1})  # a new session
        assert door.hops("GET", "/in-place") == (1, {"count": 0, "seen": 2})  # settled: a write
        group_commit_db.cacheMinimize()
        assert door.hops("GET") == (1, {"count": 0, "seen": 2})  # reloaded: it was stored


def test_a_request_with_commit_hooks_ends_in_a_thread(group_commit_db):
    with Door(group_commit_db) as door:
        door.hops("POST")
        assert door.hops("GET", "/hooked") == (1, {"count": 1, "seen": 0})
        assert door.hops("GET") == (0, {"count": 1, "seen": 0})


def test_sessions_in_a_database_of_their_own_read_in_the_loop_too(tmp_path):
    db = open_db(f"file://{tmp_path}/Data.fs", sessions_uri=f"file://{tmp_path}/Sessions.fs")
    try:
        with Door(db, manager=SessionManager(database=SESSIONS_DATABASE)) as door:
            assert door.middleware.inline
            assert door.hops("POST") == (1, {"count": 1, "seen": 0})
            assert door.hops("GET") == (0, {"count": 1, "seen": 0})
            db.databases[SESSIONS_DATABASE].cacheMinimize()
            assert door.hops("GET") == (1, {"count": 1, "seen": 0})  # the sessions database's loads
            assert door.hops("POST") == (1, {"count": 2, "seen": 0})
    finally:
        db.close()


def test_a_mapping_storage_reads_in_the_loop_too():
    db = DB(MappingStorage())
    try:
        with Door(db) as door:
            assert door.hops("POST") == (1, {"count": 1, "seen": 0})
            assert door.hops("GET") == (0, {"count": 1, "seen": 0})
    finally:
        db.close()


def test_a_stock_file_storage_keeps_its_hops(db):
    """Stock FileStorage fsyncs inside the lock every begin takes: its steps stay in threads."""
    with Door(db) as door:
        assert not door.middleware.inline
        assert door.hops("POST") == (2, {"count": 1, "seen": 0})  # open; commit and close
        assert door.hops("GET") == (2, {"count": 1, "seen": 0})  # open; abort and close


def test_zeo_keeps_the_hops_its_network_waits_need():
    address, stop = ZEO.server()
    db = ZEO.DB(address)
    try:
        with Door(db) as door:
            assert not door.middleware.inline
            assert door.hops("POST") == (2, {"count": 1, "seen": 0})
            assert door.hops("GET") == (2, {"count": 1, "seen": 0})
    finally:
        db.close()
        stop()


def test_inline_is_refused_for_a_storage_that_may_wait_on_io(db):
    with pytest.raises(ValueError, match="inline=True needs a storage .* FileStorage may wait on I/O"):
        SessionMiddleware(counter_app, db, inline=True)


def test_inline_false_keeps_every_step_in_threads(group_commit_db):
    with Door(group_commit_db, inline=False) as door:
        assert door.hops("POST") == (2, {"count": 1, "seen": 0})
        assert door.hops("GET") == (2, {"count": 1, "seen": 0})


@pytest.mark.parametrize(("make", "safe"), [
    (lambda path: MappingStorage(), True),
    (lambda path: GroupCommitFileStorage(path), True),
    (lambda path: FileStorage(path), False),
    (lambda path: DemoStorage(), True),
    (lambda path: DemoStorage(base=FileStorage(path)), True),
    (lambda path: DemoStorage(changes=FileStorage(path)), False),
], ids=["mapping", "group-commit", "stock-file", "demo", "demo-over-file", "demo-into-file"])
def test_which_storages_run_steps_in_the_loop(tmp_path, make, safe):
    storage = make(str(tmp_path / "Data.fs"))
    try:
        assert loop_safe(storage) is safe
    finally:
        storage.close()


def test_the_guard_refuses_a_load_and_a_commit_on_the_loop_and_allows_them_elsewhere(group_commit_db):
    with group_commit_db.transaction() as conn:
        conn.root()["thing"] = {"a": 1}
    tm = transaction.TransactionManager(explicit=True)
    conn = group_commit_db.open(transaction_manager=tm)
    try:
        guard_connection(conn)
        tm.begin()
        conn.cacheMinimize()
        with steps_on_loop(LoadOnLoop), pytest.raises(LoadOnLoop):
            conn.root()["thing"]
        assert conn.root()["thing"] == {"a": 1}  # outside the block it loads
        conn.root()["more"] = 1
        with steps_on_loop(), pytest.raises(RuntimeError, match="a commit reached the storage on the event"):
            tm.commit()
        tm.abort()
    finally:
        conn.close()
    with group_commit_db.transaction() as check:
        assert "more" not in check.root()
