"""SessionPublisher retries: conflicts replayed with the body, every attempt conflicting,
bodies too large to replay.
"""

from __future__ import annotations

import hashlib
from wsgiref.validate import validator

import pytest
import transaction
from publisherkit import (
    COOKIE,
    TEXT,
    Recorder,
    app_from,
    app_value,
    client,
    create_session,
    environ_for,
    issued_id,
    open_connections,
    publisher,
    request,
    stored,
    writer_app,
)
from ZODB.POSException import ConflictError, ReadConflictError

from zodbsession import (
    SessionPublisher,
    registry,
)
from zodbsession.core.store import ROOT_KEY

# -- retries -------------------------------------------------------------------


@pytest.mark.parametrize("error", [ConflictError, ReadConflictError], ids=lambda e: e.__name__)
def test_conflict_raised_by_app_is_retried_with_replayed_body_and_fresh_environ(database, error):
    attempts = []
    body = bytes(range(256)) * 40  # binary, 10 KiB

    def action(environ):
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        attempts.append({
            "attempt": environ["zodbsession.attempt"],
            "digest": hashlib.sha256(data).hexdigest(),
            "left_over": "test.mark" in environ,
        })
        environ["test.mark"] = True
        environ["zodbsession.session"]["attempt"] = environ["zodbsession.attempt"]
        if environ["zodbsession.attempt"] < 3:
            raise error("simulated")
        return "done"

    response = client(publisher(app_from(action), database)).post(
        "/", params=body, content_type="application/octet-stream")
    assert response.status_int == 200
    digest = hashlib.sha256(body).hexdigest()
    assert attempts == [{"attempt": n, "digest": digest, "left_over": False} for n in (1, 2, 3)]
    assert stored(database) == {issued_id(response): {"attempt": 3}}
    assert registry.has() is False


def test_real_conflict_at_commit_is_retried_without_lost_update(database):
    """A concurrent commit to the same session lands between the app's read and
    the publisher's commit; the commit conflicts, the retry reads both."""
    testapp = client(publisher(app_from(writer_app), database))
    session_id = create_session(testapp, seed="1")
    attempts = []

    def concurrent_append(item):
        tm = transaction.TransactionManager()
        conn = database.open(tm)
        try:
            session = conn.root()[ROOT_KEY].sessions[session_id]
            session["items"] = session.get("items", []) + [item]
            tm.commit()
        finally:
            conn.close()

    def action(environ):
        session = environ["zodbsession.session"]
        items = session.get("items", [])
        attempts.append(environ["zodbsession.attempt"])
        if environ["zodbsession.attempt"] == 1:
            concurrent_append("other")
        session["items"] = items + ["request"]
        return "ok"

    testapp.publisher.app = validator(app_from(action))
    response = request(testapp, cookie=f"{COOKIE}={session_id}")
    assert response.status_int == 200
    assert attempts == [1, 2]
    assert stored(database)[session_id]["items"] == ["other", "request"]
    assert response.headers.getall("Set-Cookie") == []


@pytest.mark.parametrize("retry_attempts", [1, 3, 5], ids=lambda n: f"attempts={n}")
@pytest.mark.parametrize("where", ["app", "commit"])
def test_every_attempt_conflicting_answers_503_with_retry_after(database, retry_attempts, where):
    calls = []

    def action(environ):
        calls.append(environ["zodbsession.attempt"])
        environ["zodbsession.session"]["x"] = 1
        root = environ["zodbsession.connection"].root()
        root["app"] = root["app"] + 100
        if where == "app":
            raise ConflictError("simulated")
        tm = transaction.TransactionManager()
        conn = database.open(tm)
        conn.root()["app"] += 1  # commits under the request: its own commit conflicts
        tm.commit()
        conn.close()
        return "ok"

    pub = publisher(app_from(action), database, retry_attempts=retry_attempts)
    response = request(client(pub))
    assert response.status_int == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers.getall("Set-Cookie") == []
    assert calls == list(range(1, retry_attempts + 1))
    assert stored(database) == {}
    assert app_value(database) == (retry_attempts if where == "commit" else 0)
    assert open_connections(database) == []


@pytest.mark.parametrize("conflict", [True, False], ids=["conflict", "success"])
def test_body_over_max_replay_bytes_gets_one_attempt_and_is_read_whole(database, conflict):
    body = b"x" * 5000
    calls = []

    def action(environ):
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        calls.append(len(data))
        if conflict:
            raise ConflictError("simulated")
        return hashlib.sha256(data).hexdigest()

    pub = publisher(app_from(action), database, max_replay_bytes=1024)
    response = client(pub).post("/", params=body, content_type="application/octet-stream",
                                expect_errors=True)
    assert calls == [5000]
    if conflict:
        assert response.status_int == 503
    else:
        assert response.status_int == 200
        assert response.text == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("size", [100, 5000], ids=["small", "over-limit"])
def test_chunked_body_is_read_whole_and_replayed_only_when_small(database, size):
    """A body without CONTENT_LENGTH (``wsgi.input_terminated``) is buffered up to
    the limit; beyond it the app still reads every byte, on one attempt only."""
    body = bytes(i % 251 for i in range(size))
    reads = []

    def app(environ, start_response):
        chunks = []
        while True:
            chunk = environ["wsgi.input"].read(333)
            if not chunk:
                break
            chunks.append(chunk)
        reads.append(b"".join(chunks))
        if environ["zodbsession.attempt"] == 1:
            raise ConflictError("simulated")
        start_response("200 OK", TEXT)
        return [b"ok"]

    pub = SessionPublisher(app, database, retry_backoff=0, max_replay_bytes=1024)
    environ = environ_for("POST", body)
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    recorder = Recorder()
    result = pub(environ, recorder)
    b"".join(result)
    if size <= 1024:
        assert recorder.status == "200 OK"
        assert reads == [body, body]
    else:
        assert recorder.status.startswith("503")
        assert reads == [body]
