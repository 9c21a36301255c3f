"""SessionPublisher's ``max_request_body``: a body over it is answered 413, unread, before any transaction.

A declared ``Content-Length`` is checked before a byte is read; a chunked
body (``wsgi.input_terminated``) is refused once it grows past the limit,
whether that shows while it is buffered for replay or while the application
reads it.
"""

from __future__ import annotations

import io

import pytest
from publisherkit import Recorder, environ_for, open_connections

from zodbsession import SessionManager, SessionPublisher
from zodbsession.core.observe import Observer


class Untouchable(io.RawIOBase):
    """A request body that fails the test if anyone reads it."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body was read")

    readline = read


class Outcomes(Observer):
    def __init__(self) -> None:
        self.finished: list[str] = []

    def request_finished(self, outcome, attempts, commit_seconds) -> None:
        self.finished.append(outcome)


def reading_app(calls: list[int]):
    def app(environ, start_response):
        chunks = []
        while chunk := environ["wsgi.input"].read(65536):
            chunks.append(chunk)
        data = b"".join(chunks)
        calls.append(len(data))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(data)).encode()]

    return app


def call(pub: SessionPublisher, environ: dict) -> tuple[str, dict[str, str], bytes]:
    recorder = Recorder()
    body = b"".join(pub(environ, recorder))
    return recorder.status, dict(recorder.headers), body


def test_a_declared_length_over_the_limit_is_refused_unread_without_a_transaction(database):
    calls: list[int] = []
    manager = SessionManager()
    outcomes = Outcomes()
    manager.observers.subscribe(outcomes)
    pub = SessionPublisher(reading_app(calls), database, manager=manager, max_request_body=1000)
    environ = environ_for("POST", CONTENT_LENGTH="1001")
    environ["wsgi.input"] = Untouchable()
    status, headers, body = call(pub, environ)
    assert status == "413 Content Too Large"
    assert headers["Content-Length"] == str(len(body))
    assert calls == []
    assert outcomes.finished == ["body_too_large"]
    assert open_connections(database) == []


@pytest.mark.parametrize("size", [1000, 999], ids=["at-the-limit", "under"])
def test_a_body_up_to_the_limit_is_served(database, size):
    calls: list[int] = []
    pub = SessionPublisher(reading_app(calls), database, max_request_body=1000)
    status, _, body = call(pub, environ_for("POST", b"x" * size))
    assert status == "200 OK" and body == str(size).encode()


@pytest.mark.parametrize(("size", "max_replay_bytes"), [(1001, 4096), (5001, 1024)],
                         ids=["found-while-buffering", "found-while-the-app-reads"])
def test_a_chunked_body_growing_past_the_limit_is_refused(database, size, max_replay_bytes):
    calls: list[int] = []
    limit = 1000 if size == 1001 else 5000
    pub = SessionPublisher(reading_app(calls), database, max_request_body=limit,
                           max_replay_bytes=max_replay_bytes)
    environ = environ_for("POST", b"y" * size)
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    status, _, _ = call(pub, environ)
    assert status == "413 Content Too Large"
    assert calls == []
    assert open_connections(database) == []


@pytest.mark.parametrize("size", [1000, 5000], ids=["replayable", "not-replayable"])
def test_a_chunked_body_at_the_limit_is_read_whole(database, size):
    calls: list[int] = []
    pub = SessionPublisher(reading_app(calls), database, max_request_body=5000, max_replay_bytes=1024)
    environ = environ_for("POST", b"z" * size)
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    status, _, body = call(pub, environ)
    assert (status, body, calls) == ("200 OK", str(size).encode(), [size])


def test_no_limit_means_none(database):
    calls: list[int] = []
    pub = SessionPublisher(reading_app(calls), database, max_request_body=None)
    status, _, _ = call(pub, environ_for("POST", b"x" * (2 << 20)))
    assert status == "200 OK" and calls == [2 << 20]


def test_the_default_limit_is_ten_mebibytes(database):
    pub = SessionPublisher(reading_app([]), database)
    assert pub.max_request_body == 10 << 20
    environ = environ_for("POST", CONTENT_LENGTH=str((10 << 20) + 1))
    environ["wsgi.input"] = Untouchable()
    assert call(pub, environ)[0] == "413 Content Too Large"
