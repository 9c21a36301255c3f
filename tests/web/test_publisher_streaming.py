"""SessionPublisher with ``streaming=True``: commit before the body ends, close the
iterable, give the connection back.
"""

from __future__ import annotations

from collections.abc import Callable
from wsgiref.validate import validator

import pytest
import transaction
from publisherkit import (
    TEXT,
    Recorder,
    app_from,
    app_value,
    client,
    environ_for,
    issued_id,
    open_connections,
    publisher,
    stored,
)
from ZODB import DB

from zodbsession import (
    PublishError,
    SessionPublisher,
    registry,
)

# -- streaming -----------------------------------------------------------------------


def streaming_app(db: DB, observed: list) -> Callable:
    def app(environ, start_response):
        session = environ["zodbsession.session"]
        session["first"] = "kept"
        environ["zodbsession.connection"].root()["app"] = 1
        start_response("200 OK", TEXT)

        def body():
            yield b"head;"
            observed.append((stored(db), app_value(db)))  # committed already?
            session["later"] = "discarded"
            environ["zodbsession.connection"].root()["app"] = 2
            yield b"middle;"
            yield b"tail"

        return body()

    return app


def test_streaming_commits_before_the_body_ends_and_discards_later_changes(database):
    observed = []
    testapp = client(publisher(streaming_app(database, observed), database, streaming=True))
    response = testapp.get("/")
    assert response.body == b"head;middle;tail"
    session_id = issued_id(response)
    assert observed == [({session_id: {"first": "kept"}}, 1)]
    assert stored(database) == {session_id: {"first": "kept"}}
    assert app_value(database) == 1
    assert open_connections(database) == []
    # the discarded change does not linger in the pooled connection's cache
    testapp.publisher.app = validator(app_from(
        lambda env: f"{sorted(env['zodbsession.session'])} {env['zodbsession.connection'].root()['app']}"))
    assert testapp.get("/").text == "['first'] 1"


def test_streaming_returns_the_connection_on_close(database):
    observed = []
    pub = SessionPublisher(streaming_app(database, observed), database, streaming=True)
    recorder = Recorder()
    body = validator(pub)(environ_for(), recorder)
    iterator = iter(body)
    assert next(iterator) == b"head;"
    assert recorder.status == "200 OK"
    assert len(open_connections(database)) == 1
    assert next(iterator) == b"middle;"
    assert len(open_connections(database)) == 1
    body.close()
    assert open_connections(database) == []
    assert registry.has() is False
    assert list(stored(database).values()) == [{"first": "kept"}]


def test_streaming_vetoed_response_is_sent_whole_and_aborted(database):
    def app(environ, start_response):
        environ["zodbsession.session"]["x"] = 1
        start_response("500 Internal Server Error", TEXT)
        return iter([b"part one;", b"part two"])

    testapp = client(publisher(app, database, streaming=True))
    response = testapp.get("/", status=500)
    assert response.body == b"part one;part two"
    assert response.headers.getall("Set-Cookie") == []
    assert stored(database) == {}
    assert open_connections(database) == []


class ClosingBody:
    """An iterable that is not a generator, and records whether it was closed."""

    def __init__(self, chunks: list[bytes], closed: list[int], attempt: int) -> None:
        self._chunks = chunks
        self._closed = closed
        self._attempt = attempt

    def __iter__(self):
        return iter(self._chunks)

    def close(self) -> None:
        self._closed.append(self._attempt)


def test_streaming_attempt_that_conflicts_closes_its_iterable(database):
    closed = []

    def app(environ, start_response):
        attempt = environ["zodbsession.attempt"]
        environ["zodbsession.session"]["x"] = attempt
        assert environ["zodbsession.connection"].root()["app"] in (0, "concurrent")
        if attempt == 1:
            tm = transaction.TransactionManager()
            conn = database.open(tm)
            conn.root()["app"] = "concurrent"
            tm.commit()
            conn.close()
        environ["zodbsession.connection"].root()["app"] = attempt
        start_response("200 OK", TEXT)
        return ClosingBody([b"a", b"b"], closed, attempt)

    # No inner validator: ClosingBody itself records the closes (and the
    # validator's __del__ assertion would only add noise when one is missed).
    pub = SessionPublisher(app, database, streaming=True, retry_backoff=0)
    response = client(pub).get("/")
    assert response.body == b"ab"
    assert closed == [1, 2]
    assert app_value(database) == 2


@pytest.mark.parametrize("failure", ["exception", "publish-error"])
def test_failing_streaming_attempt_closes_its_iterable(database, failure):
    closed = []

    class Failing(ClosingBody):
        def __iter__(self):
            yield b""
            if failure == "exception":
                raise RuntimeError("boom")
            raise PublishError("gone", status="410 Gone")

    def app(environ, start_response):
        start_response("200 OK", TEXT)
        return Failing([], closed, environ["zodbsession.attempt"])

    pub = SessionPublisher(app, database, streaming=True)
    recorder = Recorder()
    b"".join(pub(environ_for(), recorder))
    assert recorder.status.startswith("500" if failure == "exception" else "410")
    assert closed == [1]
    # A PublishError's answer commits: that connection stays with the thread.
    assert pub.release_connections() == (1 if failure == "publish-error" else 0)
    assert open_connections(database) == []
