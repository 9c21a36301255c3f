"""SessionPublisher with ``join_outer_transaction=True``: another manager owns the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from wsgiref.validate import validator

import pytest
import transaction
import webtest
from publisherkit import (
    TEXT,
    app_from,
    app_value,
    issued_id,
    open_connections,
    publisher,
    stored,
)
from transaction._transaction import Status
from ZODB.POSException import ConflictError

from zodbsession import (
    registry,
)

# -- joining an outer transaction ---------------------------------------------------


@pytest.fixture
def thread_transaction() -> Iterator[transaction.ThreadTransactionManager]:
    """The thread's default manager, left clean whatever the test did."""
    transaction.manager.abort()
    yield transaction.manager
    transaction.manager.abort()


def outer_tm(app: Callable, log: list) -> Callable:
    """A middleware owning the thread's transaction, like pyramid_tm or repoze.tm2:
    begin before the app, iterate the body, then commit (abort on error or 5xx)."""

    def middleware(environ, start_response):
        txn = transaction.manager.begin()
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"] = status
            return start_response(status, headers, exc_info)

        try:
            result = app(environ, capture)
            try:
                body = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            log.append(("before-outer-end", txn.status, transaction.manager.get() is txn))
            if captured["status"].startswith("5"):
                transaction.manager.abort()
            else:
                transaction.manager.commit()
        except Exception:
            transaction.manager.abort()
            raise
        return [body]

    return middleware


def test_joined_publisher_leaves_the_outer_transaction_alone(database, thread_transaction):
    log = []
    during = []

    def action(environ):
        environ["zodbsession.session"]["x"] = 1
        environ["zodbsession.connection"].root()["app"] = 8
        return "ok"

    pub = publisher(app_from(action), database, join_outer_transaction=True)

    def app(environ, start_response):
        body = pub(environ, start_response)
        during.append((stored(database), len(open_connections(database))))
        return body

    testapp = webtest.TestApp(validator(outer_tm(app, log)))
    response = testapp.get("/")
    session_id = issued_id(response)
    assert during == [({}, 1)]  # not committed, connection still lent
    assert log == [("before-outer-end", Status.ACTIVE, True)]
    assert stored(database) == {session_id: {"x": 1}}
    assert app_value(database) == 8
    assert open_connections(database) == []
    assert registry.has() is False


@pytest.mark.parametrize("failure", ["5xx", "exception"])
def test_joined_outer_abort_discards_the_session_change(database, thread_transaction, failure):
    def action(environ):
        environ["zodbsession.session"]["x"] = 1
        environ["zodbsession.connection"].root()["app"] = 9
        if failure == "exception":
            raise RuntimeError("boom")
        return "ok"

    pub = publisher(app_from(action, status="500 Oops"), database, join_outer_transaction=True)
    testapp = webtest.TestApp(outer_tm(pub, []))
    if failure == "exception":
        with pytest.raises(RuntimeError, match="boom"):  # the outer layer owns errors
            testapp.get("/")
    else:
        assert testapp.get("/", status=500).status_int == 500
    assert registry.has() is False
    assert stored(database) == {}
    assert app_value(database) == 0
    assert open_connections(database) == []


def test_joined_read_only_request_returns_the_connection_at_once(database,
                                                               thread_transaction):
    during = []
    pub = publisher(app_from(lambda env: env["zodbsession.session"].get("x")), database,
                    join_outer_transaction=True)

    def app(environ, start_response):
        body = pub(environ, start_response)
        during.append(len(open_connections(database)))
        return body

    webtest.TestApp(outer_tm(app, [])).get("/")
    assert during == [0]


def test_joined_failed_outer_commit_closes_the_connection_once(database, thread_transaction):
    """A failed commit runs the after-commit hooks, then the outer abort runs the
    after-abort ones: the connection must not be closed twice, for in between the
    pool may have lent it to someone else."""
    lent = {}
    joined = []

    def action(environ):
        joined.append(environ["zodbsession.connection"])
        environ["zodbsession.connection"].root()["app"] += 1
        return "ok"

    pub = publisher(app_from(action), database, join_outer_transaction=True)

    def middleware(environ, start_response):
        transaction.manager.begin()
        body = b"".join(pub(environ, start_response))
        with database.transaction() as conn:  # a concurrent commit: ours will conflict
            conn.root()["app"] += 10
        try:
            transaction.manager.commit()
        except ConflictError:
            # someone else borrows the joined connection from the pool meanwhile
            others = []
            while True:
                tm = transaction.TransactionManager()
                conn = database.open(tm)
                if conn is joined[0] or len(others) == 5:
                    break
                others.append(conn)
            lent.update(tm=tm, conn=conn)
            for other in others:
                other.close()
            transaction.manager.abort()
        return [body]

    webtest.TestApp(middleware).get("/")
    conn = lent["conn"]
    assert conn is joined[0]
    try:
        assert conn.opened is not None
        assert conn.transaction_manager is lent["tm"]
        conn.root()["app"] += 100
        lent["tm"].commit()
    finally:
        conn.close()
    assert app_value(database) == 110
    assert open_connections(database) == []


def test_joined_streaming_sends_the_whole_body(database, thread_transaction):
    def app(environ, start_response):
        environ["zodbsession.session"]["x"] = 1
        start_response("200 OK", TEXT)
        return iter([b"one;", b"two;", b"three"])

    pub = publisher(app, database, join_outer_transaction=True, streaming=True)
    response = webtest.TestApp(validator(outer_tm(pub, []))).get("/")
    assert response.body == b"one;two;three"
    assert stored(database) == {issued_id(response): {"x": 1}}
    assert open_connections(database) == []
