"""Many app servers, one ZEO server: ``zodbsession zeo``, zeo:// URIs, faults, live maintenance.

Real processes on loopback: a ZEO server (``ZeoProcess``) and app servers
(``ServerProcess``) driven over HTTP, plus in-process ZEO clients against
ZEO's own ``StorageServer`` where a test needs to reach inside the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest
import transaction
import webtest
from adminkit import TOKEN, scrape, value
from serverproc import Client, ServerProcess, ZeoProcess, free_port, run_cli
from ZEO.Exceptions import ClientDisconnected
from ZEO.StorageServer import StorageServer
from ZODB.FileStorage import FileStorage

from zodbsession.config import Settings
from zodbsession.core.db import StorageUnavailable, open_db, redact_uri, resolve, zeo_wait_timeout
from zodbsession.core.errors import StorageURIError
from zodbsession.demo.app import app as demo_app
from zodbsession.serve.server import make_publisher
from zodbsession.serve.zeo import SESSIONS_STORAGE, client_uri, parse_address, stop_in_loop

#: The bound a request waits for a lost ZEO server in these tests (the URI's wait_timeout).
WAIT = 2


@pytest.fixture
def env(zeo):
    """Settings for an app server that is a client of ``zeo``."""
    return {
        "ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=WAIT),
        "ZODBSESSION_SERVER_THREADS": "4",
        "ZODBSESSION_STORAGE_POOL_SIZE": "4",
    }


@pytest.fixture
def two_servers(tmp_path, env):
    """Two app server processes on the same ZEO server."""
    with ServerProcess(tmp_path, env) as first, ServerProcess(tmp_path, env) as second:
        yield first, second


@pytest.fixture
def two_servers_with_metrics(tmp_path, env):
    """Two app server processes on the same ZEO server, each with its admin listener (``/metrics``)."""
    with ServerProcess(tmp_path, env, admin_token=TOKEN) as first, \
            ServerProcess(tmp_path, env, admin_token=TOKEN) as second:
        yield first, second


# -- the zeo command ------------------------------------------------------------


def test_zeo_command_serves_the_file_storage_and_stops_cleanly(tmp_path, zeo):
    result = run_cli("stats", "--json", env={"ZODBSESSION_STORAGE_URI": zeo.uri()}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    databases = json.loads(result.stdout)["databases"]
    assert [d["storage_class"] for d in databases] == ["ZEO.ClientStorage.ClientStorage"]
    assert f"ZEO server listening on 127.0.0.1:{zeo.port}" in zeo.log()
    assert zeo.stop() == 0
    assert "SIGTERM received: closing the ZEO server" in zeo.log()
    assert "storages closed" in zeo.log()
    storage = FileStorage(str(tmp_path / "Data.fs"), read_only=True)  # not locked any more
    storage.close()


@pytest.mark.parametrize(
    ("address", "expected"),
    [("nonsense", "must be host:port"), ("127.0.0.1:70000", "port 1-65535"), ("host:", "host:port")],
    ids=["no-port", "port-out-of-range", "empty-port"],
)
def test_zeo_bad_address_exits_2_naming_the_key(tmp_path, address, expected):
    result = run_cli("zeo", env={"ZODBSESSION_ZEO_ADDRESS": address}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zodbsession: zeo.address: ")
    assert expected in lines[0]


def test_zeo_on_an_address_in_use_exits_2_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("zeo", env={"ZODBSESSION_ZEO_ADDRESS": f"127.0.0.1:{port}"}, cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"zodbsession: zeo.address: cannot listen on 127.0.0.1:{port}")
    assert "address already in use" in last
    assert "Traceback" not in result.stderr


def test_a_zeo_server_that_cannot_bind_leaves_no_event_loop_for_the_exit_to_close():
    """The cause of a stray "Exception ignored in BaseEventLoop.__del__" after the one line.

    ZEO's Acceptor makes an event loop and then fails to bind; the loop stays
    reachable from the exception the CLI holds while it exits, and was closed
    by the garbage collector at interpreter shutdown, after its self-pipe.
    It must already be closed when the error reaches the CLI.
    """
    from ZODB.MappingStorage import MappingStorage

    from zodbsession.core.errors import ConfigError
    from zodbsession.serve import zeo as zeo_module

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError) as raised:
            zeo_module._create_server(("127.0.0.1", taken.getsockname()[1]), {"1": MappingStorage()})
    held = raised.value  # as the CLI holds it while it exits
    loops = [frame_value for frame_value in _locals_of(held)
             if isinstance(frame_value, asyncio.AbstractEventLoop)]
    assert loops, "the failed Acceptor's loop is still reachable from the exception"
    assert all(loop.is_closed() for loop in loops)


def _locals_of(exc: BaseException):
    while exc is not None:
        traceback = exc.__traceback__
        while traceback is not None:
            yield from traceback.tb_frame.f_locals.values()
            traceback = traceback.tb_next
        exc = exc.__context__


def test_zeo_on_a_file_a_running_server_holds_exits_2_in_one_line(tmp_path):
    with ServerProcess(tmp_path, {"ZODBSESSION_STORAGE_URI": "file://var/Data.fs"}):
        result = run_cli("zeo", env={"ZODBSESSION_ZEO_ADDRESS": f"127.0.0.1:{free_port()}"},
                         cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("zodbsession: var/Data.fs is in use by another process")


def test_zeo_stops_cleanly_on_ctrl_c(tmp_path, zeo):
    zeo.process.send_signal(signal.SIGINT)
    assert zeo.process.wait(30) == 0
    assert "SIGINT received: closing the ZEO server" in zeo.log()


def test_zeo_on_a_unix_socket_serves_a_separate_sessions_storage(tmp_path):
    """The [zeo] sessions_storage is a second ZEO storage; app servers join both as one multi-db."""
    socket_path = str(tmp_path / "var" / "zeo.sock")
    zeo_env = {"ZODBSESSION_ZEO_SESSIONS_STORAGE": "var/Sessions.fs"}
    with ZeoProcess(tmp_path, zeo_env, unix_socket=socket_path) as zeo:
        env = {"ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=WAIT),
               "ZODBSESSION_STORAGE_SESSIONS_URI": zeo.uri(storage="sessions", wait_timeout=WAIT)}
        with ServerProcess(tmp_path, env) as server:
            client = Client(server.url)
            assert client.json("POST", "/api/counter") == (200, {"count": 1})
            assert client.json("POST", "/api/counter") == (200, {"count": 2})
        result = run_cli("stats", "--json", env=env, cwd=tmp_path)
        assert zeo.stop() == 0
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["stored_sessions"] == 1
    assert sorted(d["name"] for d in stats["databases"]) == ["main", "sessions"]
    assert (tmp_path / "var" / "Sessions.fs").stat().st_size > 0
    assert not os.path.exists(socket_path)  # removed when the server stopped


# -- several app servers on one ZEO server ---------------------------------------


def test_one_cookie_alternates_between_two_app_servers(two_servers):
    first, second = two_servers
    browser = Client(first.url)
    servers = [browser, browser.sharing_cookies(second.url)]
    answers = [servers[i % 2].json("POST", "/api/counter") for i in range(12)]
    assert answers == [(200, {"count": n}) for n in range(1, 13)]
    assert servers[1].json("GET", "/api/session")[1]["data"] == {"count": 12}


@dataclass
class Tally:
    """What one hammering client saw: acknowledged counts, 503s, the slowest answer."""

    counts: list[int] = field(default_factory=list)
    unavailable: list[float] = field(default_factory=list)  # when each "unavailable" 503 began
    unknown: int = 0  # 503s whose outcome is unknown (the commit may have happened)
    busy: int = 0  # 503s after a conflict on every attempt (nothing was committed)
    others: list[tuple[int, str]] = field(default_factory=list)
    slowest: float = 0.0
    last_ok: float = 0.0  # when the latest acknowledged request began


def hammer(client: Client, stop: threading.Event, tally: Tally, pause: float = 0.02) -> None:
    """POST /api/counter until *stop*, sorting the answers into *tally*.

    Between requests it pauses a random time up to *pause* seconds: 20 ms
    by default, a busy page rather than a flood, for the tests about faults
    and maintenance; 0 sends each request as soon as the last is answered.
    """
    while not stop.is_set():
        if pause:
            time.sleep(random.uniform(0, pause))
        began = time.monotonic()
        status, answer = client.json("POST", "/api/counter")
        tally.slowest = max(tally.slowest, time.monotonic() - began)
        if status == 200:
            tally.counts.append(answer["count"])
            tally.last_ok = began
        elif status == 503 and "unknown" in str(answer):
            tally.unknown += 1
        elif status == 503 and "unavailable" in str(answer):
            tally.unavailable.append(began)
            time.sleep(0.1)
        elif status == 503 and "busy" in str(answer):
            tally.busy += 1
        else:
            tally.others.append((status, str(answer)[:200]))


@contextlib.contextmanager
def hammering(first: ServerProcess, second: ServerProcess, pause: float = 0.02):
    """One browser's cookie hammering both servers from two threads; yields (browser, tallies).

    The session gets its first increment before the threads start; they stop
    when the block ends. *pause* is ``hammer``'s.
    """
    browser = Client(first.url)
    assert browser.json("POST", "/api/counter") == (200, {"count": 1})
    clients = [browser, browser.sharing_cookies(second.url)]
    tallies = [Tally(), Tally()]
    stop = threading.Event()
    threads = [threading.Thread(target=hammer, args=(c, stop, t, pause))
               for c, t in zip(clients, tallies, strict=True)]
    for thread in threads:
        thread.start()
    try:
        yield browser, tallies
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


@pytest.mark.parametrize("seconds", [3, pytest.param(60, marks=pytest.mark.slow)], ids=["3s", "60s"])
def test_two_clients_hammer_one_session_through_both_servers(two_servers_with_metrics, seconds):
    """Two clients write one key of one session through two processes, back to back, no pause.

    Nearly every request then races one in the other process: conflicts are
    retried until they commit (the retry deadline, not a count, ends them),
    so no request is answered 503, each increment is acknowledged exactly
    once and the stored count is exact. The servers' retry counters show the
    conflicts really happened.
    """
    with hammering(*two_servers_with_metrics, pause=0) as (browser, tallies):
        time.sleep(seconds)
    for tally in tallies:
        assert not (tally.unavailable or tally.unknown or tally.busy or tally.others), tally
    acknowledged = sorted(tallies[0].counts + tallies[1].counts)
    assert acknowledged == list(range(2, len(acknowledged) + 2))  # each increment seen once
    assert browser.json("GET", "/api/session")[1]["data"]["count"] == len(acknowledged) + 1
    assert all(t.counts for t in tallies), "a client never got an answer"
    assert len(acknowledged) > 10
    retries = [value(scrape(server), "zodbsession_request_retries_total")
               for server in two_servers_with_metrics]
    assert sum(retries) > 0, "no request conflicted: the test did not race"
    print(f"\n{len(acknowledged)} increments in {seconds} s, {sum(retries):.0f} retries "
          f"({retries[0]:.0f} + {retries[1]:.0f}), slowest answer "
          f"{max(t.slowest for t in tallies):.3f} s")


@pytest.mark.parametrize(
    ("how", "outages"),
    [("sigterm", 1), pytest.param("sigkill", 1, marks=pytest.mark.slow),
     pytest.param("sigkill", 4, marks=pytest.mark.slow)],
    ids=["stopped", "killed", "killed-four-times"],
)
def test_zeo_restart_mid_run_keeps_every_acknowledged_increment(tmp_path, zeo, two_servers, how,
                                                                outages):
    """Stop ZEO under load: requests get 503 within the bound, then recover with no restart."""
    first, second = two_servers
    windows = []  # (down, up) times of each outage
    with hammering(first, second) as (browser, tallies):
        time.sleep(1)
        for _ in range(outages):
            down_at = time.monotonic()
            if how == "sigterm":
                assert zeo.stop() == 0
            else:
                zeo.kill()
            time.sleep(WAIT + 1.5)  # every client meets the outage at least once
            zeo.start()
            up_at = time.monotonic()
            windows.append((down_at, up_at))
            deadline = up_at + 30
            while time.monotonic() < deadline and not all(t.last_ok > up_at for t in tallies):
                time.sleep(0.1)
            time.sleep(1)
    for tally in tallies:
        assert not tally.others, tally.others
        # Right after a reconnection (the ZEO cache starts cold) the two
        # processes conflict more; a rare request may run out of retries.
        assert tally.busy <= len(tally.counts) // 50, tally
        assert tally.unavailable, "this client never met the outage"
        assert tally.last_ok > windows[-1][1], "this client never recovered"
        assert all(any(down - 1 <= t <= up for down, up in windows) for t in tally.unavailable), \
            "503 outside an outage"
        assert tally.slowest < WAIT + 3, f"a request took {tally.slowest:.1f} s"
    acknowledged = sorted(tallies[0].counts + tallies[1].counts)
    unknown = sum(t.unknown for t in tallies)
    final = browser.json("GET", "/api/session")[1]["data"]["count"]
    # Every acknowledged increment survived; a 503 of unknown outcome may or may not have.
    assert len(acknowledged) + 1 <= final <= len(acknowledged) + 1 + unknown
    assert len(set(acknowledged)) == len(acknowledged)
    assert first.process.poll() is None and second.process.poll() is None
    logs = first.log() + second.log()
    assert "the storage server is unreachable" in logs
    # No request failed with a 500 (ZODB itself logs a traceback for a failed load).
    assert "the request raised" not in logs


def test_app_server_started_while_zeo_is_down_gives_up_within_the_bound(tmp_path):
    env = {"ZODBSESSION_STORAGE_URI": f"zeo://127.0.0.1:{free_port()}?wait_timeout=1"}
    began = time.monotonic()
    result = run_cli("serve", env={**env, "ZODBSESSION_SERVER_PORT": str(free_port())}, cwd=tmp_path)
    assert time.monotonic() - began < 15
    assert result.returncode == 2
    assert "waiting at most 1 s" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("zodbsession: zeo://127.0.0.1:") and "no ZEO server answered within 1 s" in last
    assert "Traceback" not in result.stderr


# -- maintenance against the live ZEO server --------------------------------------


def test_maintenance_commands_run_against_live_zeo_while_serving(tmp_path, zeo):
    """stats, ls, show, pack, revoke and expire through the CLI while two servers serve."""
    env = {"ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=WAIT)}
    with ServerProcess(tmp_path, env) as first, ServerProcess(tmp_path, env) as second:
        Client(second.url).json("POST", "/api/counter")
        background = Client(first.url)
        tally, stop = Tally(), threading.Event()
        worker = threading.Thread(target=hammer, args=(background, stop, tally))
        worker.start()
        try:
            alice = Client(first.url)
            assert alice.json("POST", "/api/login", {"user": "alice"})[0] == 200
            victim = Client(first.url)
            for _ in range(3):
                victim.json("POST", "/api/counter")
            victim_id = victim.cookie()

            stats = run_cli("stats", "--json", env=env, cwd=tmp_path)
            assert stats.returncode == 0, stats.stderr
            assert json.loads(stats.stdout)["live_sessions"] == 4
            listed = run_cli("ls", "--json", env=env, cwd=tmp_path)
            assert listed.returncode == 0, listed.stderr
            assert victim_id in [json.loads(line)["id"] for line in listed.stdout.splitlines()]
            shown = run_cli("show", "--json", "--", victim_id, env=env, cwd=tmp_path)
            assert json.loads(shown.stdout)["data"]["count"] in (3, "3")  # shown as a repr
            packed = run_cli("pack", env=env, cwd=tmp_path)
            assert packed.returncode == 0, packed.stderr

            revoked = run_cli("revoke", "--", victim_id, env=env, cwd=tmp_path)
            assert (revoked.returncode, revoked.stdout.strip()) == (0, "revoked 1 session")
            # Ended on both servers at once: the old cookie is unknown, a new session starts.
            on_second = victim.sharing_cookies(second.url)
            assert on_second.json("POST", "/api/counter") == (200, {"count": 1})
            assert victim.cookie() != victim_id
            assert victim.json("POST", "/api/counter") == (200, {"count": 2})

            by_user = run_cli("revoke", "--user", "alice", env=env, cwd=tmp_path)
            assert by_user.stdout.strip() == "revoked 1 session(s)"
            assert alice.sharing_cookies(second.url).json("GET", "/api/session")[1]["user"] is None

            expired = run_cli("expire", env=env, cwd=tmp_path)
            assert (expired.returncode, expired.stdout.strip()) == (0, "expired 0 session(s)")
        finally:
            stop.set()
            worker.join(30)
        assert not (tally.unavailable or tally.unknown or tally.busy or tally.others), tally
        assert tally.counts == list(range(1, len(tally.counts) + 1))


# -- the zeo:// URI and the publisher, in process ------------------------------------


def test_zeo_uri_gets_a_short_wait_timeout_and_server_sync_by_default():
    assert zeo_wait_timeout("zeo://127.0.0.1:8100") == 10
    assert zeo_wait_timeout("zeo://127.0.0.1:8100?wait_timeout=3") == 3
    assert zeo_wait_timeout("file://Data.fs") is None
    _factory, db_options = resolve("zeo://127.0.0.1:8100?connection_cache_size=123")
    assert db_options["cache_size"] == 123


@pytest.mark.parametrize(
    ("query", "expected"),
    [("wait_timeout=0", "wait_timeout must be"), ("server_sync=2", "server_sync must be 0 or 1"),
     ("no_such_option=1", "no_such_option")],
    ids=["zero-wait", "bad-server-sync", "unknown-option"],
)
def test_bad_zeo_uri_options_are_refused_before_connecting(query, expected):
    with pytest.raises(StorageURIError, match=expected):
        resolve(f"zeo://127.0.0.1:8100?{query}")


class ZeoThread:
    """ZEO's own StorageServer on a thread of the test process, restartable on its port."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.port = free_port()
        self.server: StorageServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> ZeoThread:
        self.server = StorageServer(("127.0.0.1", self.port), {"1": FileStorage(self.path)})
        self.thread = threading.Thread(target=self.server.loop, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.acceptor.event_loop.call_soon_threadsafe(stop_in_loop, self.server)
        self.thread.join(10)
        self.server.close()
        self.server = None


@pytest.fixture
def zeo_thread(tmp_path):
    server = ZeoThread(str(tmp_path / "Data.fs")).start()
    yield server
    server.stop()


@pytest.fixture
def zeo_app(zeo_thread):
    """The demo app in a publisher on a ZEO client with a 1 s wait_timeout, through WebTest."""
    db = open_db(f"zeo://127.0.0.1:{zeo_thread.port}?wait_timeout=1")
    yield webtest.TestApp(make_publisher(demo_app, db, Settings())), db
    db.close()


def test_requests_get_503_after_one_wait_timeout_then_recover(zeo_thread, zeo_app):
    app, db = zeo_app
    assert app.post("/api/counter").json == {"count": 1}
    zeo_thread.stop()
    for method, path in [("POST", "/api/counter"), ("GET", "/api/session")]:
        began = time.monotonic()
        response = app.request(path, method=method, expect_errors=True)
        assert response.status_int == 503
        assert "unavailable" in response.text
        assert response.headers["Retry-After"]
        assert time.monotonic() - began < 2.5  # one wait_timeout, not one per retry attempt
    assert not [c for c in db.connectionDebugInfo() if c["opened"]]  # none leaked
    zeo_thread.start()
    deadline = time.monotonic() + 15
    while (response := app.post("/api/counter", expect_errors=True)).status_int != 200:
        assert time.monotonic() < deadline, "did not recover"
        time.sleep(0.2)
    assert response.json == {"count": 2}  # the 503s wrote nothing


def test_disconnect_in_the_commit_finish_is_outcome_unknown_and_not_retried(zeo_app):
    app, db = zeo_app
    app.post("/api/counter")
    storage = db.storage
    calls = []

    def finish_then_lose_the_server(*args, **kwargs):
        calls.append(args)
        raise ClientDisconnected("injected: the server went away during tpc_finish")

    storage.tpc_finish = finish_then_lose_the_server
    try:
        response = app.post("/api/counter", expect_errors=True)
    finally:
        del storage.tpc_finish
    assert response.status_int == 503
    assert "unknown" in response.text
    assert len(calls) == 1  # not retried: a retry could apply the change twice
    assert app.get("/api/session").json["data"] == {"count": 1}


def test_opening_a_zeo_uri_with_no_server_fails_within_its_wait_timeout():
    began = time.monotonic()
    with pytest.raises(StorageUnavailable, match="no ZEO server answered within 1 s"):
        open_db(f"zeo://127.0.0.1:{free_port()}?wait_timeout=1")
    assert time.monotonic() - began < 5


def test_server_sync_lets_a_second_client_read_what_the_first_just_committed(zeo_thread):
    uri = f"zeo://127.0.0.1:{zeo_thread.port}?wait_timeout=2"
    writer, reader = open_db(uri), open_db(uri)
    try:
        for n in range(20):
            with writer.transaction() as conn:
                conn.root()["n"] = n
            tm = transaction.TransactionManager(explicit=True)
            conn = reader.open(tm)
            tm.begin()
            assert conn.root()["n"] == n
            tm.abort()
            conn.close()
    finally:
        writer.close()
        reader.close()


@pytest.mark.parametrize(
    ("text", "address", "uri"),
    [("127.0.0.1:8100", ("127.0.0.1", 8100), "zeo://127.0.0.1:8100"),
     ("[::1]:8100", ("::1", 8100), "zeo://[::1]:8100"),
     ("/run/zeo.sock", "/run/zeo.sock", "zeo:///run/zeo.sock")],
    ids=["ipv4", "ipv6", "unix-socket"],
)
def test_zeo_address_parses_and_gives_the_client_uri(text, address, uri):
    assert parse_address(text) == address
    assert client_uri(address) == uri
    assert client_uri(address, SESSIONS_STORAGE) == uri + "?storage=sessions"


def test_passwords_never_reach_messages():
    assert redact_uri("postgres://me:s3cret@db:5432/x?keep_history=false") == (
        "postgres://me:***@db:5432/x?keep_history=false")
    assert redact_uri("zeo://h:1?username=me&password=s3cret") == "zeo://h:1?username=me&password=***"
    with pytest.raises(StorageURIError) as info:
        resolve("postgres://me:s3cret@db:5432/x?bogus=1")
    assert "s3cret" not in str(info.value)
