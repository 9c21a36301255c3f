"""A deadline on each request's storage work: a frozen ZEO server gives bounded 503s, not hangs.

The ZEO server is stopped with SIGSTOP: its connections stay open, so ZEO's
client notices nothing and, without ``storage.request_timeout``, every
request waited until the server resumed. With it, each is answered 503 with
``Retry-After`` (the clients here give up after 30 s: an answer at all is
the test, no duration is measured), and the first request after SIGCONT
is served. A request without a session cookie that reads nothing the
server must send (a new visitor's page) is answered 200 all along: it
begins without ZEO's round trip.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
from serverproc import Client, ServerProcess, ZeoProcess, wait_for

DEADLINE = 2


@pytest.fixture
def zeo(tmp_path):
    with ZeoProcess(tmp_path, {"ZODBSESSION_ZEO_STORAGE": str(tmp_path / "Data.fs")}) as server:
        yield server
        os.kill(server.process.pid, signal.SIGCONT)  # never leave it stopped for the teardown


def test_requests_on_a_frozen_zeo_end_in_503_and_recover_when_it_resumes(tmp_path, env, zeo):
    env = {**env, "ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=60),
           "ZODBSESSION_STORAGE_REQUEST_TIMEOUT": str(DEADLINE)}
    with ServerProcess(tmp_path, env) as server:
        users = [Client(server.url) for _ in range(6)]
        for user in users:
            assert user.json("POST", "/api/counter") == (200, {"count": 1})
        os.kill(zeo.process.pid, signal.SIGSTOP)
        answers: list[tuple[int, str | None]] = []
        cookieless: list[tuple[int, str | None]] = []
        lock = threading.Lock()

        def use(client: Client, method: str, path: str) -> None:
            status, headers, _body = client.request(method, path, b"" if method == "POST" else None,
                                                    timeout=30)
            with lock:
                (answers if client.cookie() else cookieless).append((status, headers.get("Retry-After")))

        try:
            # more requests than the server has threads, writes and reads, with and without cookies
            jobs = [(user, "POST", "/api/counter") for user in users]
            jobs += [(users[0], "GET", "/api/session"), (users[1], "GET", "/api/session")]
            jobs += [(Client(server.url), "GET", "/api/session") for _ in range(4)]
            threads = [threading.Thread(target=use, args=job) for job in jobs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert len(answers) + len(cookieless) == len(jobs), "a request hung on the frozen storage"
            # A request naming a session needs the server: 503 within the deadline.
            assert len(answers) == 8
            assert all(status == 503 and retry_after for status, retry_after in answers), answers
            # A request naming none, reading nothing the server must send, is served
            # from what this process holds (no round trip at its begin).
            assert cookieless == [(200, None)] * 4, cookieless
        finally:
            os.kill(zeo.process.pid, signal.SIGCONT)
        wait_for(lambda: users[0].json("POST", "/api/counter")[0] == 200, 30, "service after SIGCONT")
        status, answer = users[1].json("POST", "/api/counter")
        assert (status, answer) == (200, {"count": 2})  # nothing half-done while it was frozen


@pytest.fixture
def frozen_postgres():
    postgreskit = pytest.importorskip("postgreskit")
    reason = postgreskit.skip_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("relstorage", reason="RelStorage is not installed (pip install RelStorage)")
    with postgreskit.PrivateCluster() as cluster:
        yield cluster


def test_requests_on_a_frozen_postgresql_end_in_503_and_recover_when_it_resumes(tmp_path, env,
                                                                               frozen_postgres):
    """RelStorage on a stopped PostgreSQL: each statement's deadline answers 503, SIGCONT serves again.

    Every process of the cluster is stopped (SIGSTOP), so nothing on the
    server side (``statement_timeout``, ``lock_timeout``) can run: the
    deadline is the client's. Requests already past their poll (a load, a
    vote) and requests still to begin (the poll itself, a new connection) are
    both bounded.
    """
    uri = frozen_postgres.database("frozen")
    env = {**env, "ZODBSESSION_STORAGE_URI": uri, "ZODBSESSION_SERVER_THREADS": "4",
           "ZODBSESSION_STORAGE_REQUEST_TIMEOUT": str(DEADLINE)}
    with ServerProcess(tmp_path, env) as server:
        users = [Client(server.url) for _ in range(4)]
        for user in users:
            assert user.json("POST", "/api/counter") == (200, {"count": 1})
        frozen_postgres.freeze()
        answers: list[tuple[int, str | None, str]] = []
        lock = threading.Lock()

        def use(client: Client, method: str, path: str) -> None:
            status, headers, body = client.request(method, path, b"" if method == "POST" else None,
                                                   timeout=60)
            with lock:
                answers.append((status, headers.get("Retry-After"), body.decode(errors="replace")))

        try:
            jobs = [(user, "POST", "/api/counter") for user in users]
            jobs += [(Client(server.url), "GET", "/api/session") for _ in range(2)]
            threads = [threading.Thread(target=use, args=job) for job in jobs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert len(answers) == len(jobs), "a request hung on the frozen database"
            assert all(status == 503 and retry_after for status, retry_after, _ in answers), answers
        finally:
            frozen_postgres.thaw()
        wait_for(lambda: users[0].json("POST", "/api/counter")[0] == 200, 30, "service after SIGCONT")
        status, answer = users[1].json("POST", "/api/counter")
        assert (status, answer) == (200, {"count": 2})  # nothing half-done while it was frozen
    assert "storage.request_timeout" in server.log()


def test_a_postgres_uri_gets_libpq_connect_timeout_from_the_deadline_unless_it_sets_one():
    from zodbsession.core.relstorage_deadline import with_connect_timeout

    uri = "postgres://u:p@127.0.0.1:5432/db"
    assert with_connect_timeout(uri, 10) == uri + "?connect_timeout=10"
    with_query = uri + "?keep_history=false"
    assert with_connect_timeout(with_query, 0.5) == with_query + "&connect_timeout=2"  # libpq's least
    assert with_connect_timeout(uri + "?connect_timeout=30", 10) == uri + "?connect_timeout=30"
    assert with_connect_timeout(uri, 0) == uri
    assert with_connect_timeout("zeo://127.0.0.1:8100", 10) == "zeo://127.0.0.1:8100"


def test_maintenance_commands_open_the_storage_without_the_request_deadline(tmp_path, zeo):
    """A pack or a sweep is no request: its calls may rightly take minutes, so none is cut short."""
    from zodbsession.config import Settings, StorageSettings
    from zodbsession.serve.cli import _database

    config = tmp_path / "zodbsession.toml"
    config.write_text(f'[storage]\nuri = "{zeo.uri(wait_timeout=60)}"\nrequest_timeout = 2\n')
    settings = Settings(storage=StorageSettings(uri=zeo.uri(wait_timeout=60), request_timeout=2))
    served = settings.open_db()
    try:  # what serve opens: bounded
        assert served.storage._server.io_call.zodbsession_deadline == 2
    finally:
        served.close()
    with _database(str(config)) as (db, _manager):
        assert getattr(db.storage._server.io_call, "zodbsession_deadline", None) is None
