"""Every row of the outcome table, through the ASGI front door, as the WSGI publisher answers it.

The same paths as the publisher's decision-table test (``test_events.py``),
here a bare ASGI application called in process: the answer's status, the
outcome reported to the observers, the attempts made, and what was stored.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from commitkit import FinishFails, HeldVote, VoteFails
from ZODB import DB
from ZODB.POSException import ConflictError

from zodbsession import SessionManager
from zodbsession.core.observe import Observer
from zodbsession.web.asgi import SessionMiddleware


class Recorder(Observer):
    def __init__(self) -> None:
        self.finished: list[tuple[str, int]] = []

    def request_finished(self, outcome, attempts, commit_seconds) -> None:
        self.finished.append((outcome, attempts))


async def outcome_app(scope, receive, send) -> None:
    """Does what the path says; answers 200 unless the path is /5xx."""
    session = scope["zodbsession.session"]
    txn = scope["zodbsession.connection"].transaction_manager.get()
    path = scope["path"]
    status = 200
    if path == "/write":
        session["n"] = session.get("n", 0) + 1
    elif path == "/read":
        session.get("n")
    elif path == "/raise":
        session["n"] = 99
        raise RuntimeError("application bug")
    elif path == "/5xx":
        session["n"] = 99
        status = 500
    elif path == "/huge":
        session["blob"] = "x" * 100_000
    elif path == "/lambda":
        session["callback"] = lambda: None
    elif path == "/conflict":
        raise ConflictError("always")
    elif path == "/conflict-once":
        if scope["zodbsession.attempt"] == 1:
            raise ConflictError("once")
        session["n"] = 1
    elif path == "/unknown":
        session["n"] = 1
        txn.join(FinishFails(RuntimeError("gone")))
    elif path == "/disk-full":
        session["n"] = 1
        txn.join(VoteFails(OSError(28, "No space left on device")))
    elif path == "/no-start":
        return
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


OUTCOMES = {
    "/write": ("committed", 1, 200),
    "/read": ("committed", 1, 200),
    "/raise": ("aborted_exception", 1, 500),
    "/5xx": ("aborted_veto", 1, 500),
    "/huge": ("aborted_invalid", 1, 500),
    "/lambda": ("aborted_invalid", 1, 500),
    "/conflict": ("gave_up", 3, 503),
    "/conflict-once": ("committed", 2, 200),
    "/unknown": ("outcome_unknown", 1, 503),
    "/disk-full": ("storage_error", 1, 503),
    "/no-start": ("aborted_exception", 1, 500),
}


def call(app: Any, path: str, cookie: str | None = None) -> tuple[int, dict[bytes, bytes], bytes]:
    """One POST straight into *app* in a fresh event loop: status, headers, body."""
    sent: list[dict[str, Any]] = []
    headers = [(b"cookie", f"zodbsession={cookie}".encode())] if cookie else []
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "scheme": "http"}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize(("path", "expected"), OUTCOMES.items(), ids=OUTCOMES.keys())
def test_each_row_answers_and_reports_as_under_wsgi(database, path, expected):
    recorder = Recorder()
    manager = SessionManager(max_sessions=2)
    manager.observers.subscribe(recorder)
    app = SessionMiddleware(outcome_app, database, manager=manager, retry_attempts=3, retry_backoff=0)
    outcome, attempts, status = expected
    assert call(app, path)[0] == status
    assert recorder.finished == [(outcome, attempts)]


@pytest.mark.parametrize("path", ["/raise", "/5xx", "/huge", "/unknown", "/disk-full"])
def test_an_aborted_or_unknown_request_sends_no_cookie(database, path):
    app = SessionMiddleware(outcome_app, database, retry_backoff=0)
    assert b"set-cookie" not in call(app, path)[1]


def test_a_new_session_past_a_cap_of_users_sessions_gets_503_and_theirs_go_on(database):
    recorder = Recorder()
    manager = SessionManager(max_sessions=1)
    with database.transaction() as conn:
        owned = manager.new(conn, user_id="alice")
        owned["n"] = 1
        cookie = owned.id
        manager.container(conn).expiry.clear()  # nothing the cap could evict
    manager.observers.subscribe(recorder)
    app = SessionMiddleware(outcome_app, database, manager=manager)
    refused = call(app, "/write")
    assert refused[0] == 503
    assert 1 <= int(refused[1][b"retry-after"]) <= manager.idle_timeout
    assert call(app, "/write", cookie)[0] == 200
    assert [outcome for outcome, _ in recorder.finished] == ["session_limit", "committed"]
    with database.transaction() as conn:
        assert manager.get(conn, cookie)["n"] == 2


async def conflict_in_a_task_group(scope, receive, send) -> None:
    """Raises its conflict from inside a task group (as anyio-based code does), once."""
    scope["zodbsession.session"]["n"] = scope["zodbsession.attempt"]

    async def conflicting() -> None:
        if scope["zodbsession.attempt"] == 1:
            raise ConflictError("inside a task group")

    async with asyncio.TaskGroup() as group:
        group.create_task(conflicting())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_conflict_inside_an_exception_group_is_retried(database):
    recorder = Recorder()
    manager = SessionManager()
    manager.observers.subscribe(recorder)
    app = SessionMiddleware(conflict_in_a_task_group, database, manager=manager, retry_backoff=0)
    assert call(app, "/")[0] == 200
    assert recorder.finished == [("committed", 2)]


def test_a_task_cancelled_during_the_commit_waits_for_it_before_closing(database):
    """The commit runs on in its thread; the task ends only after it: never two threads on one connection."""
    held = HeldVote()

    async def app(scope, receive, send):
        scope["zodbsession.connection"].transaction_manager.get().join(held)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = SessionMiddleware(app, database)
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "scheme": "http"}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    async def main() -> tuple[bool, bool]:
        task = asyncio.create_task(middleware(scope, receive, send))
        await asyncio.to_thread(held.reached.wait, 10)
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        done_while_held = task.done()
        held.opened.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return done_while_held, held.finished

    assert asyncio.run(main()) == (False, True)
    assert len(database.pool.available) >= 1  # the connection went back to the pool


def sent_by(app: Any, path: str = "/") -> list[dict[str, Any]]:
    """Every message *app* sent for one POST, in order."""
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "scheme": "http"}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def stored_sessions(db: DB) -> list[dict[str, Any]]:
    with db.transaction() as conn:
        return [session.data() for session in SessionManager().container(conn).sessions.values()]


async def streamed(scope, receive, send) -> None:
    """Writes, streams a head and a chunk, writes again, then fails or ends as the path says."""
    session = scope["zodbsession.session"]
    session["n"] = 1
    status = 500 if scope["path"] == "/5xx" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"head ", "more_body": True})
    session["n"] = 2
    if scope["path"] == "/raise":
        raise RuntimeError("the stream broke")
    await send({"type": "http.response.body", "body": b"tail"})


def test_a_streamed_5xx_is_sent_whole_and_aborted(database):
    app = SessionMiddleware(streamed, database, streaming=True)
    sent = sent_by(app, "/5xx")
    assert sent[0]["status"] == 500
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"head tail"
    assert stored_sessions(database) == []


def test_a_stream_that_breaks_keeps_what_its_head_committed_and_is_cut_short(database):
    app = SessionMiddleware(streamed, database, streaming=True)
    sent = sent_by(app, "/raise")
    assert [m.get("body") for m in sent[1:]] == [b"head "]
    assert sent[-1].get("more_body") is True  # the body never ended: the server cuts it
    assert stored_sessions(database) == [{"n": 1}]


def test_run_in_connection_calls_of_one_request_never_overlap(database):
    """Two calls gathered at once: the second starts only after the first returned."""
    import threading

    from zodbsession.web.asgi import run_in_connection

    first_in, second_in = threading.Event(), threading.Event()
    overlapped: list[bool] = []

    def first(conn):
        first_in.set()
        overlapped.append(second_in.wait(0.5))  # set only if the second ran beside it

    def second(conn):
        second_in.set()

    async def app(scope, receive, send):
        await asyncio.gather(run_in_connection(first), run_in_connection(second))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    assert sent_by(SessionMiddleware(app, database))[0]["status"] == 200
    assert overlapped == [False]
    assert second_in.is_set()


def test_a_bad_first_cookie_does_not_hide_the_live_session_behind_it(database):
    manager = SessionManager()
    app = SessionMiddleware(outcome_app, database, manager=manager)
    _, headers, _ = call(app, "/write")
    live = headers[b"set-cookie"].decode().split(";")[0].split("=", 1)[1]
    # Two cookie headers, as HTTP/2 sends them: an unknown id first, then the live one.
    assert call(app, "/write", f"{'x' * 43}; zodbsession={live}")[0] == 200
    with database.transaction() as conn:
        assert manager.get(conn, live)["n"] == 2
