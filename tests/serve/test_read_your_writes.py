"""Read-your-writes across app servers on one ZEO: a session made on one is found on the next.

The miss this guards against: server B's transaction reads a snapshot built
from the invalidations B's ZEO client has *applied*; when they are held up,
a cookie naming a session server A just created and acknowledged finds
nothing, and B answered it with a fresh session (the user logged out). The
first tests make that happen on purpose, by holding B's invalidations; the
last runs three real ``serve`` processes with immediate cross-server pairs.
"""

from __future__ import annotations

import threading

import pytest
import webtest
from serverproc import Client, ServerProcess, ZeoProcess, free_port, wait_for
from ZEO.StorageServer import StorageServer
from ZODB.FileStorage import FileStorage

from zodbsession.config import Settings
from zodbsession.core.db import open_db
from zodbsession.demo.app import app as demo_app
from zodbsession.serve.server import make_publisher
from zodbsession.serve.zeo import stop_in_loop


class HeldInvalidations:
    """Hold what a ZEO client receives of others' commits (cache, connections, last tid) until ``release``."""

    def __init__(self, db) -> None:
        self.runner = db.storage._server
        self.io = self.runner.client
        self.apply = self.io.invalidateTransaction
        self.held: list[tuple[bytes, list[bytes]]] = []
        self.lock = threading.Lock()
        self.io.invalidateTransaction = self._hold

    def _hold(self, tid: bytes, oids: list[bytes]) -> None:  # in the client's I/O thread
        with self.lock:
            if self.held is None:
                self.apply(tid, oids)
            else:
                self.held.append((tid, oids))

    def count(self) -> int:
        with self.lock:
            return len(self.held or [])

    def release_and_wait(self) -> None:
        """``release``, then wait until the client has applied all of it."""
        with self.lock:
            newest = self.held[-1][0] if self.held else None
        self.release()
        if newest is not None:
            wait_for(lambda: self.runner.client.cache.getLastTid() >= newest, 30, "invalidations applied")

    def release(self) -> None:
        """Apply what was held, in order, in the I/O thread, and stop holding."""
        with self.lock:
            held, self.held = self.held, None
        for tid, oids in held or []:
            self.runner.loop.call_soon_threadsafe(self.apply, tid, oids)


@pytest.fixture
def zeo_server(tmp_path):
    port = free_port()
    server = StorageServer(("127.0.0.1", port), {"1": FileStorage(str(tmp_path / "Data.fs"))})
    thread = threading.Thread(target=server.loop, daemon=True)
    thread.start()
    yield port
    server.acceptor.event_loop.call_soon_threadsafe(stop_in_loop, server)
    thread.join(10)
    server.close()


#: Run by B's application at the start of each request, inside its transaction.
in_request: list = []


def hooked_app(environ, start_response):
    for hook in in_request:
        hook()
    return demo_app(environ, start_response)


@pytest.fixture
def two_publishers(zeo_server):
    """Servers A and B: the demo app in a publisher on ZEO clients of their own."""
    dbs = [open_db(f"zeo://127.0.0.1:{zeo_server}?wait_timeout=5") for _ in range(2)]
    apps = [demo_app, hooked_app]
    yield [(webtest.TestApp(make_publisher(app, db, Settings())), db)
           for app, db in zip(apps, dbs, strict=True)]
    in_request.clear()
    for db in dbs:
        db.close()


def warm_up(a, b) -> None:
    """A session made on A and used on B: both have the container, and B has loaded it.

    (Without it, B's fresh session would also create the container, conflict
    with A's, and the retry would hide the miss.)
    """
    cookie = cookie_of(call(a, "POST", "/api/counter"))
    assert call(b, "POST", "/api/counter", cookie).json == {"count": 2}


def call(app, method: str, path: str, cookie: str | None = None, **kw):
    """One request as a new browser would send it: only *cookie*, not the TestApp's jar."""
    app.reset()
    headers = {"Cookie": f"zodbsession={cookie}"} if cookie else {}
    return app.request(path, method=method, headers=headers, **kw)


def cookie_of(response) -> str:
    return response.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]


def test_a_session_made_on_a_is_found_on_b_whose_invalidations_are_late(two_publishers):
    (a, _), (b, b_db) = two_publishers
    warm_up(a, b)
    held = HeldInvalidations(b_db)
    first = call(a, "POST", "/api/counter")
    assert first.json == {"count": 1}
    wait_for(lambda: held.count() >= 1, 30, "A's invalidations held at B")  # B has not applied them
    # B's request begins on a snapshot without A's session; the invalidations
    # arrive once it is under way, before it looks the session up.
    in_request.append(held.release_and_wait)
    second = call(b, "POST", "/api/counter", cookie_of(first))
    assert second.json == {"count": 2}, "B answered the cookie with a fresh session"
    assert "Set-Cookie" not in second.headers


def test_a_read_on_b_finds_the_session_a_just_made(two_publishers):
    """A read commits nothing, so no conflict could ever have caught the miss."""
    (a, _), (b, b_db) = two_publishers
    warm_up(a, b)
    held = HeldInvalidations(b_db)
    first = call(a, "POST", "/api/counter")
    wait_for(lambda: held.count() >= 1, 30, "A's invalidations held at B")
    in_request.append(held.release_and_wait)
    seen = call(b, "GET", "/api/session", cookie_of(first)).json
    assert seen["new"] is False and seen["data"] == {"count": 1}


def test_b_answers_503_rather_than_a_fresh_session_while_it_cannot_catch_up(two_publishers, monkeypatch):
    import zodbsession.core.freshness as freshness
    monkeypatch.setattr(freshness, "CATCH_UP_WAIT", 0.5)
    (a, _), (b, b_db) = two_publishers
    warm_up(a, b)
    held = HeldInvalidations(b_db)
    first = call(a, "POST", "/api/counter")
    wait_for(lambda: held.count() >= 1, 30, "A's invalidations held at B")
    second = call(b, "POST", "/api/counter", cookie_of(first), expect_errors=True)
    assert second.status_int == 503 and "Retry-After" in second.headers
    assert "Set-Cookie" not in second.headers
    held.release()
    third = call(b, "POST", "/api/counter", cookie_of(first))
    assert third.json == {"count": 2}


def test_an_unknown_cookie_still_gets_a_fresh_session_at_no_more_than_one_round_trip(two_publishers):
    (_, _), (b, _) = two_publishers
    response = call(b, "POST", "/api/counter", "x" * 43)
    assert response.json == {"count": 1}
    assert "Set-Cookie" in response.headers


PAIRS = 200


def test_three_servers_on_one_zeo_200_immediate_cross_server_pairs_lose_no_session(tmp_path):
    with ZeoProcess(tmp_path, {"ZODBSESSION_ZEO_STORAGE": str(tmp_path / "Data.fs")}) as zeo:
        env = {"ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=10), "ZODBSESSION_SERVER_THREADS": "4",
               "ZODBSESSION_STORAGE_POOL_SIZE": "4"}
        with ServerProcess(tmp_path, env) as s1, ServerProcess(tmp_path, env) as s2, \
                ServerProcess(tmp_path, env) as s3:
            servers = [s1, s2, s3]
            fresh = []
            for n in range(PAIRS):
                on_a = Client(servers[n % 3].url)
                assert on_a.json("POST", "/api/counter") == (200, {"count": 1})
                on_b = on_a.sharing_cookies(servers[(n + 1) % 3].url)
                status, answer = on_b.json("POST", "/api/counter")
                assert status == 200, answer
                if answer != {"count": 2}:
                    fresh.append((n, answer))
            assert fresh == []


def test_three_servers_on_one_sqlite_relstorage_lose_no_session_across_immediate_pairs(tmp_path):
    """RelStorage begins each transaction with a poll of the database itself: the same guarantee."""
    pytest.importorskip("relstorage", reason="RelStorage is not installed (pip install RelStorage)")
    env = {"ZODBSESSION_STORAGE_URI": f"sqlite://?data_dir={tmp_path / 'relstorage'}&keep_history=false",
           "ZODBSESSION_SERVER_THREADS": "4", "ZODBSESSION_STORAGE_POOL_SIZE": "4"}
    with ServerProcess(tmp_path, env) as s1, ServerProcess(tmp_path, env) as s2, \
            ServerProcess(tmp_path, env) as s3:
        servers = [s1, s2, s3]
        fresh = []
        for n in range(60):
            on_a = Client(servers[n % 3].url)
            assert on_a.json("POST", "/api/counter") == (200, {"count": 1})
            status, answer = on_a.sharing_cookies(servers[(n + 1) % 3].url).json("POST", "/api/counter")
            assert status == 200, answer
            if answer != {"count": 2}:
                fresh.append((n, answer))
        assert fresh == []


# -- what ZEO itself guarantees, without the guard -----------------------------------


def test_every_pooled_connection_begins_with_a_round_trip_to_the_zeo_server(zeo_server):
    """``server_sync=1`` reaches every connection: ZODB binds a connection's sync when it is made.

    ``MVCCAdapterInstance.__init__`` keeps ``storage.sync`` as it is then;
    ``ClientStorage`` only makes it the ping in ``notify_connected``. A
    connection made before the client's first connection would never sync;
    ``open_db`` waits for the server, so none is.
    """
    db = open_db(f"zeo://127.0.0.1:{zeo_server}?wait_timeout=5")
    try:
        connections = [db.open() for _ in range(4)]
        syncs = {connection._storage._sync for connection in connections}
        assert syncs == {db.storage.sync}
        assert db.storage.sync.__qualname__ == "ClientStorage.notify_connected.<locals>.<lambda>"
        for connection in connections:
            connection.close()
    finally:
        db.close()


def test_a_commit_acknowledged_on_a_is_seen_by_the_next_begin_on_b_without_the_guard(zeo_server):
    """The ordering ``server_sync`` promises, checked on bare ZODB connections (no catch_up).

    The server queues the invalidation for B before it answers A's
    ``tpc_finish`` (its one event loop writes it before anything B sends
    later is read); B applies it in its I/O thread before the reply to its
    begin's ping resolves. If this ever failed, the miss would be ZEO's.
    """
    import transaction

    uri = f"zeo://127.0.0.1:{zeo_server}?wait_timeout=5"
    a, b = open_db(uri), open_db(uri)
    try:
        a_tm = transaction.TransactionManager(explicit=True)
        b_tm = transaction.TransactionManager(explicit=True)
        a_conn, b_conn = a.open(a_tm), b.open(b_tm)
        behind = []
        for n in range(300):
            with a_tm:
                a_conn.root()[f"key{n % 20}"] = n
            acknowledged = a.storage.lastTransaction()
            b_tm.begin()
            seen = b_conn.root().get(f"key{n % 20}")
            if seen != n or b.storage.lastTransaction() < acknowledged:
                behind.append((n, seen))
            b_tm.abort()
        a_conn.close()
        b_conn.close()
        assert behind == []
    finally:
        a.close()
        b.close()


def test_only_requests_naming_a_session_begin_with_the_round_trip(zeo_server):
    """A cookieless request begins on what the client has heard; a cookie, or a retry, asks the server.

    Counted on the client's ``sync`` (the ping ``server_sync=1`` makes).
    """
    db = open_db(f"zeo://127.0.0.1:{zeo_server}?wait_timeout=5")
    pings = []
    sync = db.storage.sync

    def counted_sync(*args):
        pings.append(True)
        return sync(*args)

    try:
        attempts = []

        def app(environ, start_response):
            attempts.append(environ["zodbsession.attempt"])
            if environ.get("QUERY_STRING") == "conflict" and len(attempts) == 1:
                from ZODB.POSException import ConflictError

                raise ConflictError("once")
            if environ["REQUEST_METHOD"] == "POST":
                environ["zodbsession.session"]["n"] = 1
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        client = webtest.TestApp(make_publisher(app, db, Settings()))
        for connection in db.pool.all:
            connection._storage._sync = counted_sync
        db.storage.sync = counted_sync  # connections made from now on

        def pings_of(call):
            del pings[:]
            call()
            return len(pings)

        assert pings_of(lambda: client.get("/")) == 0  # no cookie: no round trip
        assert pings_of(lambda: client.post("/")) == 0  # a new session's write: none either
        assert client.cookies, "the POST made a session"
        assert pings_of(lambda: client.get("/")) == 1  # its cookie: one
        client.reset()
        attempts.clear()
        assert pings_of(lambda: client.get("/?conflict")) == 1  # the retry's
        assert attempts == [1, 2]
    finally:
        db.close()
