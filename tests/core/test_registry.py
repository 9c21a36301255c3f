"""The scoped registry: the current request's connection and session, anywhere.

Inside a request through ``SessionPublisher`` the registry and its module
proxies (``current_session``, ``current_connection``) name the same objects as
the environ; outside one they raise ``NoActiveRequest``; scopes never leak
between threads, asyncio tasks or custom scopes; ``remove`` ends a scope.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.validate import validator

import pytest
import transaction
import webtest
from ZODB import DB
from ZODB.POSException import ConflictError

from zodbsession import (
    NoActiveRequest,
    PublishError,
    RequestSession,
    Scope,
    SessionManager,
    SessionPublisher,
    SessionRegistry,
    current_connection,
    current_session,
    registry,
)
from zodbsession.core.registry import after_abort, after_commit, before_commit
from zodbsession.core.store import ROOT_KEY

TEXT = [("Content-Type", "text/plain")]


@pytest.fixture(autouse=True)
def no_scope_leaks() -> Iterator[None]:
    """Every test starts and must end without a current scope."""
    assert registry.has() is False
    yield
    assert registry.has() is False


def open_scope(db: DB, *, explicit: bool = False) -> Scope:
    """A script-style scope: a connection with its own manager, and a lazy session."""
    tm = transaction.TransactionManager(explicit=explicit)
    conn = db.open(tm)
    if explicit:
        tm.begin()
    return Scope(conn, RequestSession(SessionManager(), conn, None))


def committed_root(db: DB) -> dict[str, Any]:
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        return dict(conn.root())
    finally:
        tm.abort()
        conn.close()


# -- inside and outside a request --------------------------------------------------


def test_current_session_and_connection_inside_app_are_the_environs(database):
    seen = {}

    def app(environ, start_response):
        session = environ["zodbsession.session"]
        connection = environ["zodbsession.connection"]
        current_session["who"] = "proxy"
        seen.update(
            registry_session=registry.session is session,
            registry_connection=registry.connection is connection,
            scope_environ=registry().environ is environ,
            scope_manager=registry().transaction_manager is connection.transaction_manager,
            proxy_unwraps=current_session._zodbsession_unwrap() is session._zodbsession_unwrap(),
            proxy_reads=session["who"] == "proxy" and current_session["who"] == "proxy",
            proxy_attribute=current_session.id == session.id,
            proxy_contains="who" in current_session and len(current_session) == 1,
            connection_root=current_connection.root() is connection.root(),
            connection_manager=current_connection.transaction_manager
            is connection.transaction_manager,
        )
        start_response("200 OK", TEXT)
        return [b"ok"]

    webtest.TestApp(validator(SessionPublisher(validator(app), database))).get("/")
    assert seen and all(seen.values()), seen


@pytest.mark.parametrize("use", [
    lambda: current_session["x"],
    lambda: current_session.id,
    lambda: len(current_session),
    lambda: current_connection.root(),
    lambda: registry.session,
    lambda: registry.connection,
    lambda: registry(),
], ids=["session-item", "session-attribute", "session-len", "connection", "registry-session",
        "registry-connection", "registry-call"])
def test_outside_a_request_the_proxies_raise_no_active_request(use):
    with pytest.raises(NoActiveRequest, match="no zodbsession scope"):
        use()
    assert isinstance(NoActiveRequest("x"), LookupError)


def test_proxy_reprs_say_when_no_request_is_active():
    assert repr(current_session) == "<current_session: none>"
    assert repr(current_connection) == "<current_connection: none>"


def _outcome_app(environ, start_response):
    path = environ["PATH_INFO"]
    environ["zodbsession.session"]["x"] = 1
    assert registry.has()
    if path == "/fail":
        raise RuntimeError("boom")
    if path == "/retry" and environ["zodbsession.attempt"] == 1:
        raise ConflictError("simulated")
    if path == "/always-conflict":
        raise ConflictError("simulated")
    if path == "/publish":
        raise PublishError("nope", status="404 Not Found")
    start_response("500 Oops" if path == "/5xx" else "200 OK", TEXT)
    return [b"ok"]


@pytest.mark.parametrize(("path", "status", "kept"), [
    ("/ok", 200, 1), ("/fail", 500, 0), ("/retry", 200, 1), ("/always-conflict", 503, 0),
    ("/publish", 404, 1), ("/5xx", 500, 0),
])
def test_no_scope_remains_after_any_request_and_only_a_clean_ending_keeps_its_connection(
        database, path, status, kept):
    publisher = SessionPublisher(_outcome_app, database, retry_backoff=0)
    response = webtest.TestApp(validator(publisher)).get(path, expect_errors=True)
    assert response.status_int == status
    assert registry.has() is False
    # A committed request's connection stays with its thread for the next
    # request; a failed, vetoed or given-up one went back to the pool.
    assert len([conn for conn in database.pool.all if conn.opened]) == kept
    assert publisher.release_connections() == kept
    assert [conn for conn in database.pool.all if conn.opened] == []


def test_publisher_uses_the_registry_it_is_given(database):
    mine = SessionRegistry()
    seen = []

    def app(environ, start_response):
        seen.append((mine.connection is environ["zodbsession.connection"], registry.has()))
        start_response("200 OK", TEXT)
        return [b"ok"]

    webtest.TestApp(SessionPublisher(app, database, registry=mine)).get("/")
    assert seen == [(True, False)]
    assert mine.has() is False


# -- isolation -----------------------------------------------------------------------


def test_scopes_are_isolated_across_threads(database):
    mine = SessionRegistry()
    barrier = threading.Barrier(4, timeout=10)
    results: dict[int, Any] = {}
    errors = []

    def worker(n):
        try:
            assert mine.has() is False
            scope = open_scope(database)
            mine.set(scope)
            barrier.wait()  # every thread has set its own scope now
            results[n] = mine() is scope and mine.connection is scope.connection
            barrier.wait()
            mine.remove()
            results[n] = results[n] and mine.has() is False
        except Exception as exc:  # reported below, with the thread's number
            errors.append((n, exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert results == {0: True, 1: True, 2: True, 3: True}


def test_a_thread_started_inside_a_request_sees_no_scope(database):
    mine = SessionRegistry()
    scope = open_scope(database)
    mine.set(scope)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(mine.has()))
    thread.start()
    thread.join(timeout=10)
    assert seen == [False]
    assert mine() is scope
    mine.remove()


def test_scopes_are_isolated_across_asyncio_tasks(database):
    mine = SessionRegistry()

    async def task(n, started, release):
        scope = open_scope(database)
        mine.set(scope)
        started.set()
        await release.wait()  # the other tasks set theirs meanwhile
        own = mine() is scope
        mine.remove()
        return n, own, mine.has()

    async def main():
        events = [(asyncio.Event(), asyncio.Event()) for _ in range(5)]
        tasks = [asyncio.create_task(task(n, *pair)) for n, pair in enumerate(events)]
        for started, _ in events:
            await started.wait()
        outer_sees = mine.has()
        for _, release in reversed(events):
            release.set()
        return outer_sees, await asyncio.gather(*tasks)

    outer_sees, results = asyncio.run(main())
    assert outer_sees is False
    assert results == [(n, True, False) for n in range(5)]


def test_custom_scopefunc_keys_the_scopes(database):
    current = {"key": "a"}
    mine = SessionRegistry(scopefunc=lambda: current["key"])
    scope_a = open_scope(database)
    mine.set(scope_a)
    current["key"] = "b"
    assert mine.has() is False
    with pytest.raises(NoActiveRequest):
        mine()
    scope_b = open_scope(database)
    mine.set(scope_b)
    assert mine() is scope_b
    current["key"] = "a"
    assert mine() is scope_a
    mine.clear()
    assert mine.has() is False
    current["key"] = "b"
    assert mine() is scope_b
    mine.remove()
    assert mine.has() is False
    assert scope_b.connection.opened is None
    assert scope_a.connection.opened is not None  # clear() leaves the connection alone
    scope_a.connection.close()


# -- remove ------------------------------------------------------------------------------


def test_remove_aborts_uncommitted_changes_and_returns_the_connection(database):
    mine = SessionRegistry()
    scope = open_scope(database)
    mine.set(scope)
    scope.connection.root()["app"] = "uncommitted"
    scope.session["x"] = 1
    mine.remove()
    assert mine.has() is False
    assert scope.connection.opened is None
    assert "app" not in committed_root(database)
    assert ROOT_KEY not in committed_root(database)
    assert [conn for conn in database.pool.all if conn.opened] == []


def test_remove_after_an_explicit_commit_returns_the_connection(database):
    """An explicit manager has no transaction after its commit: remove() must
    still give the connection back instead of failing on NoTransaction."""
    mine = SessionRegistry()
    scope = open_scope(database, explicit=True)
    mine.set(scope)
    scope.connection.root()["app"] = "committed"
    scope.transaction_manager.commit()
    mine.remove()
    assert mine.has() is False
    assert scope.connection.opened is None
    assert committed_root(database)["app"] == "committed"


def test_remove_without_a_scope_does_nothing():
    mine = SessionRegistry()
    mine.remove()
    assert mine.has() is False


def test_remove_inside_a_script_scope_then_set_again(database):
    mine = SessionRegistry()
    for value in (1, 2):
        scope = open_scope(database)
        mine.set(scope)
        scope.connection.root()["app"] = value
        scope.transaction_manager.commit()
        mine.remove()
    assert committed_root(database)["app"] == 2
    assert [conn for conn in database.pool.all if conn.opened] == []


@pytest.mark.parametrize("hook", [before_commit, after_commit, after_abort], ids=lambda f: f.__name__)
def test_outside_a_request_registering_a_hook_raises_no_active_request(hook):
    with pytest.raises(NoActiveRequest, match="no zodbsession scope"):
        hook(print)
