"""Per-transaction data and hooks: ``Scope.data``, ``before_commit``, ``after_commit``, ``after_abort``.

Each hook runs once, for the request's final outcome, never for an attempt
that was retried; shown under real ``ConflictError``\\ s, made by a second
connection committing to the same session while the request runs.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import transaction
import webtest
from ZODB import DB

from zodbsession import SessionManager, SessionPublisher
from zodbsession.core.observe import Observer
from zodbsession.core.registry import after_abort, after_commit, before_commit, registry
from zodbsession.core.request_session import RequestSession
from zodbsession.core.store import ROOT_KEY
from zodbsession.ops.metrics import Metrics

COOKIE = "zodbsession"


def write_behind(db: DB, session_id: str, value: Any) -> None:
    """Commit a change to the session from a connection of its own: a concurrent request."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        conn.root()[ROOT_KEY].sessions[session_id]["other"] = value
        tm.commit()
    finally:
        conn.close()


def stored_data(db: DB, session_id: str) -> dict[str, Any]:
    with db.transaction() as conn:
        return conn.root()[ROOT_KEY].sessions[session_id].data()


class Hooked:
    """An application that registers every kind of hook on each attempt and records what ran."""

    def __init__(self, db: DB, *, conflict_on: set[int] = frozenset(), status: str = "200 OK",
                 raises: Exception | None = None) -> None:
        self.db = db
        self.conflict_on = conflict_on
        self.status = status
        self.raises = raises
        self.ran: list[tuple[str, int]] = []
        self.data_seen: list[dict[str, Any]] = []

    def __call__(self, environ, start_response):
        attempt = environ["zodbsession.attempt"]
        scope = registry()
        self.data_seen.append(dict(scope.data))
        scope.data["attempt"] = attempt
        before_commit(self.ran.append, ("before_commit", attempt))
        after_commit(self.ran.append, ("after_commit", attempt))
        after_abort(self.ran.append, ("after_abort", attempt))
        session = environ["zodbsession.session"]
        session["attempts"] = session.get("attempts", []) + [attempt]
        if attempt in self.conflict_on:
            write_behind(self.db, session.id, attempt)
        if self.raises is not None:
            raise self.raises
        start_response(self.status, [("Content-Type", "text/plain")])
        return [b"done"]


def session_of(db: DB, pub: SessionPublisher) -> tuple[webtest.TestApp, str]:
    """A client of *pub* holding a stored session whose ``attempts`` is empty."""
    def make(environ, start_response):
        environ["zodbsession.session"]["attempts"] = []
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"made"]

    testapp = webtest.TestApp(SessionPublisher(make, db))
    response = testapp.post("/")
    testapp.app = pub
    return testapp, response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]


def test_a_real_conflict_runs_after_commit_once_for_the_attempt_that_committed(database):
    app = Hooked(database, conflict_on={1, 2})
    pub = SessionPublisher(app, database, retry_backoff=0)
    testapp, session_id = session_of(database, pub)
    response = testapp.get("/")
    assert response.status_int == 200
    assert app.ran == [("before_commit", 1), ("before_commit", 2), ("before_commit", 3),
                       ("after_commit", 3)]
    assert stored_data(database, session_id) == {"attempts": [3], "other": 2}


def test_scope_data_is_new_for_each_attempt(database):
    app = Hooked(database, conflict_on={1})
    pub = SessionPublisher(app, database, retry_backoff=0)
    testapp, _ = session_of(database, pub)
    assert testapp.get("/").status_int == 200
    assert app.data_seen == [{}, {}]


def test_giving_up_runs_after_abort_once_and_never_after_commit(database):
    app = Hooked(database, conflict_on={1, 2})
    pub = SessionPublisher(app, database, retry_backoff=0, retry_attempts=2)
    testapp, session_id = session_of(database, pub)
    response = testapp.get("/", expect_errors=True)
    assert response.status_int == 503
    assert app.ran == [("before_commit", 1), ("before_commit", 2), ("after_abort", 2)]
    assert stored_data(database, session_id) == {"attempts": [], "other": 2}


@pytest.mark.parametrize("how", ["exception", "5xx"])
def test_an_aborted_request_runs_after_abort_only(database, how):
    app = Hooked(database, raises=RuntimeError("boom") if how == "exception" else None,
                 status="503 Service Unavailable")
    response = webtest.TestApp(SessionPublisher(app, database)).get("/", expect_errors=True)
    assert response.status_int == (500 if how == "exception" else 503)
    assert app.ran == [("after_abort", 1)]


def test_a_refusing_before_commit_hook_aborts_like_an_exception(database):
    committed = []

    def app(environ, start_response):
        environ["zodbsession.session"]["x"] = 1

        def refuse() -> None:
            raise ValueError("the order total is negative")

        before_commit(refuse)
        after_commit(committed.append, "committed")
        after_abort(committed.append, "aborted")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"would be ok"]

    response = webtest.TestApp(SessionPublisher(app, database)).get("/", expect_errors=True)
    assert response.status_int == 500
    assert response.headers.get("Set-Cookie") is None
    assert committed == ["aborted"]
    with database.transaction() as conn:
        assert len(conn.root()[ROOT_KEY].sessions) == 0


def test_a_before_commit_hook_may_still_write_and_its_write_commits(database):
    def app(environ, start_response):
        session = environ["zodbsession.session"]
        before_commit(session.__setitem__, "stamped", True)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    response = webtest.TestApp(SessionPublisher(app, database)).get("/")
    session_id = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    assert stored_data(database, session_id) == {"stamped": True}


class HookFailures(Observer):
    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []
        self.finished: list[str] = []

    def hook_failed(self, kind: str, error: BaseException) -> None:
        self.failed.append((kind, str(error)))

    def request_finished(self, outcome, attempts, commit_seconds) -> None:
        self.finished.append(outcome)


def test_a_raising_after_commit_hook_is_logged_and_counted_and_the_request_stays_committed(
        database, caplog):
    manager = SessionManager()
    failures = HookFailures()
    metrics = Metrics()
    manager.observers.subscribe(failures)
    manager.observers.subscribe(metrics)
    ran = []

    def app(environ, start_response):
        environ["zodbsession.session"]["paid"] = True

        def send_mail() -> None:
            raise ConnectionRefusedError("the mail server is down")

        after_commit(send_mail)
        after_commit(ran.append, "the next hook still runs")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"paid"]

    with caplog.at_level(logging.ERROR):
        response = webtest.TestApp(SessionPublisher(app, database, manager=manager)).get("/")
    assert response.status_int == 200
    assert response.headers.get("Set-Cookie")
    session_id = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    assert stored_data(database, session_id) == {"paid": True}
    assert ran == ["the next hook still runs"]
    assert failures.failed == [("after_commit", "the mail server is down")]
    assert failures.finished == ["committed"]
    assert "after_commit hook" in caplog.text and "the mail server is down" in caplog.text
    assert b'zodbsession_hook_failures_total{kind="after_commit"} 1.0' in metrics.render()


def test_a_read_that_commits_nothing_still_runs_after_commit(database):
    ran = []

    def app(environ, start_response):
        after_commit(ran.append, "committed")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read"]

    testapp = webtest.TestApp(SessionPublisher(app, database))
    before = database.storage.lastTransaction()
    assert testapp.get("/").status_int == 200
    assert ran == ["committed"]
    assert database.storage.lastTransaction() == before


def test_settle_runs_once_per_attempt_before_the_nothing_joined_check(database, monkeypatch):
    """A ``settle`` that writes (saving an in-place change) makes a read commit, each attempt afresh."""
    settled = []

    def settle(self: RequestSession) -> None:
        settled.append(self)
        if self.resolved:
            self["settled"] = len(settled)

    def reader(environ, start_response):
        session = environ["zodbsession.session"]
        session.get("attempts")
        if environ["zodbsession.attempt"] == 1:
            write_behind(database, session.id, "behind")  # the settled write then conflicts
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read"]

    testapp, session_id = session_of(database, SessionPublisher(reader, database, retry_backoff=0))
    monkeypatch.setattr(RequestSession, "settle", settle, raising=False)
    assert testapp.get("/").status_int == 200
    assert len(settled) == 2 and settled[0] is not settled[1]
    assert stored_data(database, session_id) == {"attempts": [], "other": "behind", "settled": 2}


def test_hooks_of_a_joined_publisher_go_to_the_outer_transaction(database):
    ran = []

    def app(environ, start_response):
        environ["zodbsession.session"]["x"] = 1
        after_commit(ran.append, "committed")
        after_abort(ran.append, "aborted")
        before_commit(ran.append, "before")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    pub = SessionPublisher(app, database, join_outer_transaction=True)
    manager = transaction.manager
    manager.begin()
    try:
        webtest.TestApp(pub).get("/")
        assert ran == []
        manager.commit()
    finally:
        manager.abort()
    assert ran == ["before", "committed"]
