"""SessionMiddleware end to end: a Starlette app on a real uvicorn on 127.0.0.1, over real HTTP.

The server runs in a thread of the test process (``asgikit``), on a temporary
FileStorage; clients are httpx clients with cookie jars, or raw sockets where
a client must misbehave. What was committed is always read back through a
fresh connection of the test's own, never through a request's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import transaction
from asgikit import http_client, serving
from commitkit import Gate, HeldVote
from persistent import Persistent
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from ZODB import DB
from ZODB.FileStorage import FileStorage

from zodbsession import PublishError, Redirect, SessionManager, current_connection, current_session
from zodbsession.core.groupcommit import GroupCommitFileStorage
from zodbsession.core.locks import MAX_WAITING
from zodbsession.core.observe import Observer
from zodbsession.core.registry import after_abort, after_commit
from zodbsession.web.asgi import SessionMiddleware, run_in_connection

#: Seconds any wait in these tests may take at most (never asserted on: a bound against hangs).
WAIT = 10


class Box(Persistent):
    """The application's own persistent data: one value."""

    def __init__(self, value: Any = 0) -> None:
        self.value = value


class Outcomes(Observer):
    """Collects how requests ended, and lets a test wait for the next report."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, int]] = []
        self.retried: list[tuple[str, int]] = []
        self._reported = threading.Condition()

    def request_finished(self, outcome, attempts, commit_seconds) -> None:
        with self._reported:
            self.finished.append((outcome, attempts))
            self._reported.notify_all()

    def request_retried(self, error, attempt) -> None:
        self.retried.append((type(error).__name__, attempt))

    def wait_for(self, count: int) -> list[tuple[str, int]]:
        with self._reported:
            if not self._reported.wait_for(lambda: len(self.finished) >= count, WAIT):
                raise AssertionError(f"only {len(self.finished)} of {count} requests were reported")
            return list(self.finished)


# -- the application ------------------------------------------------------------


class Lab:
    """The Starlette app under test, with what its endpoints report back to the test."""

    def __init__(self, db: DB) -> None:
        self.db = db
        self.gate = Gate()
        self.ran: list[str] = []
        self.at_gate: list[str] = []
        self.interfered = 0
        self.started = threading.Event()
        self.stopped = threading.Event()
        routes = [
            Route("/count", self.count, methods=["GET", "POST"]),
            Route("/read", self.read),
            Route("/fail", self.fail, methods=["POST"]),
            Route("/five-hundred", self.five_hundred, methods=["POST"]),
            Route("/flash", self.flash, methods=["POST"]),
            Route("/refuse", self.refuse, methods=["POST"]),
            Route("/conflict", self.conflict, methods=["POST"]),
            Route("/upload", self.upload, methods=["POST"]),
            Route("/hold", self.hold, methods=["POST"]),
            Route("/slow", self.slow, methods=["POST"]),
            Route("/current", self.current),
            Route("/stream", self.stream),
            Route("/stream-conflict", self.stream_conflict, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/hooked/{fail}", self.hooked, methods=["POST"]),
            WebSocketRoute("/ws", self.websocket),
        ]
        self.app = Starlette(routes=routes, lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.started.set()
        yield
        self.stopped.set()

    async def count(self, request: Request) -> Response:
        session = request.scope["zodbsession.session"]
        session["count"] = session.get("count", 0) + 1
        return PlainTextResponse(str(session["count"]))

    async def read(self, request: Request) -> Response:
        session = request.scope["zodbsession.session"]
        box = await run_in_connection(_box)
        return PlainTextResponse(f"{session.get('count', 0)} {session.get('flash')} {box.value}")

    async def fail(self, request: Request) -> Response:
        session = request.scope["zodbsession.session"]
        session["count"] = session.get("count", 0) + 100
        box = await run_in_connection(_box)
        box.value += 100
        raise ValueError("the endpoint failed after writing")

    async def five_hundred(self, request: Request) -> Response:
        request.scope["zodbsession.session"]["count"] = -1
        (await run_in_connection(_box)).value = -1
        return PlainTextResponse("broken", status_code=503)

    async def flash(self, request: Request) -> Response:
        request.scope["zodbsession.session"]["flash"] = "saved"
        raise Redirect("/read")

    async def refuse(self, request: Request) -> Response:
        request.scope["zodbsession.session"]["count"] = 41
        raise PublishError("no such thing", status="404 Not Found")

    async def conflict(self, request: Request) -> Response:
        """Write the body into the box; on attempt 1, another connection commits the box first."""
        body = await request.body()
        box = await run_in_connection(_box)
        if request.scope["zodbsession.attempt"] == 1:
            await asyncio.to_thread(self._interfere)
        box.value = body.decode()
        return PlainTextResponse(f"attempt {request.scope['zodbsession.attempt']}: {body.decode()}")

    def _interfere(self) -> None:
        with self.db.transaction() as conn:
            conn.root()["box"].value = "the other connection's"
        self.interfered += 1

    async def upload(self, request: Request) -> Response:
        """Write first, then read a body from a client that goes away half-way."""
        request.scope["zodbsession.session"]["count"] = 7
        (await run_in_connection(_box)).value = "uploaded"
        self.ran.append("upload")
        try:
            async for _chunk in request.stream():
                self.gate.reached.set()
        except ClientDisconnect:
            self.ran.append("disconnected")
        return PlainTextResponse("done")

    async def hold(self, request: Request) -> Response:
        request.scope["zodbsession.connection"].transaction_manager.get().join(HeldVote(self.gate))
        return PlainTextResponse("held and released")

    async def slow(self, request: Request) -> Response:
        """Count, then wait at the gate: the request holds its session meanwhile."""
        session = request.scope["zodbsession.session"]
        session["count"] = session.get("count", 0) + 1
        self.at_gate.append("slow")
        await asyncio.to_thread(self.gate.wait)
        return PlainTextResponse(str(session["count"]))

    async def current(self, request: Request) -> Response:
        same = (current_connection.root()._p_jar is request.scope["zodbsession.connection"])
        in_thread = await asyncio.to_thread(lambda: current_session.get("count"))
        return PlainTextResponse(f"{same} {current_session.get('count')} {in_thread}")

    async def stream(self, request: Request) -> Response:
        session = request.scope["zodbsession.session"]
        session["count"] = 1

        async def chunks():
            yield b"first "
            session["count"] = 2  # after the commit: discarded
            yield b"second"

        return StreamingResponse(chunks(), media_type="text/plain")

    async def stream_conflict(self, request: Request) -> Response:
        """As ``conflict``, answered by a stream: the commit at its first chunk conflicts once."""
        body = await request.body()
        box = await run_in_connection(_box)
        attempt = request.scope["zodbsession.attempt"]
        if attempt == 1:
            await asyncio.to_thread(self._interfere)
        box.value = body.decode()

        async def chunks():
            yield f"attempt {attempt}: ".encode()
            yield body

        return StreamingResponse(chunks(), media_type="text/plain")

    async def hooked(self, request: Request) -> Response:
        request.scope["zodbsession.session"]["count"] = 1
        after_commit(self.ran.append, "committed")
        after_abort(self.ran.append, "aborted")
        if request.path_params["fail"] == "yes":
            raise ValueError("aborts")
        return PlainTextResponse("hooked")

    async def logout(self, request: Request) -> Response:
        request.scope["zodbsession.session"].logout()
        return PlainTextResponse("bye")

    async def websocket(self, websocket) -> None:
        await websocket.accept()
        await websocket.send_text(str("zodbsession.session" in websocket.scope))
        await websocket.close()


def _box(conn) -> Box:
    box = conn.root()["box"]
    box._p_activate()
    return box


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(params=["inline", "threads"])
def database(request, db_path: str) -> Iterator[DB]:
    """Not the folder's MappingStorage: a FileStorage with ``root()["box"]``, run both ways.

    ``inline``: the ``GroupCommitFileStorage`` that ``file://`` opens, whose
    reads run in the loop and whose commits hop once (``web.asgi.inline``);
    ``threads``: a stock ``FileStorage``, every step in a worker thread (as on ZEO).
    """
    storage = GroupCommitFileStorage(db_path) if request.param == "inline" else FileStorage(db_path)
    db = DB(storage)
    with db.transaction() as conn:
        conn.root()["box"] = Box()
    yield db
    db.close()


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
def lab(database) -> Lab:
    return Lab(database)


def middleware(lab: Lab, outcomes: Outcomes, **options: Any) -> SessionMiddleware:
    manager = SessionManager()
    manager.observers.subscribe(outcomes)
    options.setdefault("retry_backoff", 0)
    return SessionMiddleware(lab.app, lab.db, manager=manager, **options)


@pytest.fixture
def server(lab, outcomes):
    """The lab app behind SessionMiddleware (default options), served by uvicorn."""
    with serving(middleware(lab, outcomes)) as running:
        yield running


def committed(db: DB, session_id: str | None = None) -> tuple[Any, Any]:
    """What is committed: the box's value and the session's data (None if not stored)."""
    with db.transaction() as conn:
        box = conn.root()["box"].value
        data = None
        if session_id is not None:
            session = SessionManager().get(conn, session_id)
            data = session.data() if session is not None else None
        return box, data


def client(server, cookie: str | None = None) -> httpx.Client:
    return http_client(server, cookie)


# -- one transaction per request ----------------------------------------------------


def test_success_commits_and_sets_the_cookie_once(server, database):
    with client(server) as c:
        assert c.post("/count").text == "1"
        first = c.cookies["zodbsession"]
        response = c.post("/count")
        assert response.text == "2"
        assert "set-cookie" not in response.headers
    assert committed(database, first) == (0, {"count": 2})


def test_sixteen_clients_on_their_own_sessions_and_eight_on_one_keep_exact_counts(lab, outcomes,
                                                                                  database):
    """24 clients at once: each own session counts its own requests, the shared one all of the 8's."""
    rounds = 3
    with serving(middleware(lab, outcomes, max_waiting_per_session=8)) as running:
        with client(running) as first:
            first.post("/count")
            shared = first.cookies["zodbsession"]

        def own() -> tuple[str, str]:
            with client(running) as c:
                answers = [c.post("/count").text for _ in range(rounds)]
                return c.cookies["zodbsession"], answers[-1]

        def on_shared() -> list[str]:
            with client(running, shared) as c:
                return [c.post("/count").text for _ in range(rounds)]

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            owns = [pool.submit(own) for _ in range(16)]
            shares = [pool.submit(on_shared) for _ in range(8)]
            own_results = [f.result(WAIT * 3) for f in owns]
            shared_answers = sorted(int(a) for f in shares for a in f.result(WAIT * 3))
    assert [answer for _, answer in own_results] == [str(rounds)] * 16
    assert len({cookie for cookie, _ in own_results}) == 16
    for cookie, _ in own_results:
        assert committed(database, cookie)[1] == {"count": rounds}
    # Serialized on the one session: every answer seen once, none lost.
    assert shared_answers == list(range(2, 2 + 8 * rounds))
    assert committed(database, shared)[1] == {"count": 1 + 8 * rounds}


def test_failing_endpoint_rolls_back_session_and_application_data(server, database, outcomes):
    with client(server) as c:
        c.post("/count")
        cookie = c.cookies["zodbsession"]
        response = c.post("/fail")
        assert response.status_code == 500
        assert c.get("/read").text == "1 None 0"
    assert committed(database, cookie) == (0, {"count": 1})
    assert ("aborted_exception", 1) in outcomes.wait_for(3)


def test_5xx_answer_is_sent_and_aborted(server, database, outcomes):
    with client(server) as c:
        c.post("/count")
        response = c.post("/five-hundred")
        assert (response.status_code, response.text) == (503, "broken")
        assert c.get("/read").text == "1 None 0"
    assert ("aborted_veto", 1) in outcomes.wait_for(3)


def test_redirect_commits_the_flash_set_before_it(server, database):
    with client(server) as c:
        response = c.post("/flash")
        assert (response.status_code, response.headers["location"]) == (303, "/read")
        assert "zodbsession=" in response.headers["set-cookie"]
        assert c.get("/read").text == "0 saved 0"


def test_publish_error_commits_with_its_status(server, database):
    with client(server) as c:
        response = c.post("/refuse")
        assert (response.status_code, response.text) == (404, "no such thing")
        assert committed(database, c.cookies["zodbsession"])[1] == {"count": 41}


def test_logout_deletes_the_cookie(server, database):
    with client(server) as c:
        c.post("/count")
        cookie = c.cookies["zodbsession"]
        response = c.post("/logout")
        assert "Max-Age=0" in response.headers["set-cookie"]
    assert committed(database, cookie)[1] is None


def test_current_session_and_connection_work_in_the_task_and_its_threads(server):
    with client(server) as c:
        c.post("/count")
        assert c.get("/current").text == "True 1 1"


@pytest.mark.parametrize(("fail", "ran"), [("no", ["committed"]), ("yes", ["aborted"])],
                         ids=["commit", "abort"])
def test_transaction_hooks_registered_in_the_task_run_for_the_outcome(server, lab, fail, ran):
    with client(server) as c:
        c.post(f"/hooked/{fail}")
    assert lab.ran == ran


def test_the_middleware_needs_no_framework_and_no_server():
    """zodbsession.web.asgi speaks bare ASGI: it imports no framework, no server, no ZEO."""
    import ast
    from pathlib import Path

    import zodbsession.web.asgi

    imported: set[str] = set()
    for path in Path(zodbsession.web.asgi.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"starlette", "fastapi", "uvicorn", "ZEO", "waitress"}
    # The layer is the first folder below the package: serve/ holds the server, workers and CLI.
    ours = {name.split(".")[1] for name in imported if name.startswith("zodbsession.")}
    assert ours  # the door does import the core: the check below looks at real names
    assert not ours & {"serve", "admin", "config", "demo"}


# -- conflicts and bodies ------------------------------------------------------------


def test_real_conflict_is_retried_with_the_body_replayed(server, database, lab, outcomes):
    """Another connection commits the box during attempt 1; attempt 2 reads the same body again."""
    with client(server) as c:
        response = c.post("/conflict", content=b"from the client")
    assert response.text == "attempt 2: from the client"
    assert lab.interfered == 1
    assert committed(database)[0] == "from the client"
    assert outcomes.retried == [("ConflictError", 1)]
    assert outcomes.wait_for(1) == [("committed", 2)]


def test_every_attempt_conflicting_answers_503_with_retry_after(lab, outcomes, database):
    with serving(middleware(lab, outcomes, retry_attempts=1)) as running, client(running) as c:
        response = c.post("/conflict", content=b"lost")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert committed(database)[0] == "the other connection's"
    assert outcomes.wait_for(1) == [("gave_up", 1)]


def test_body_over_max_replay_bytes_gets_one_attempt(lab, outcomes, database):
    with serving(middleware(lab, outcomes, max_replay_bytes=4)) as running, client(running) as c:
        response = c.post("/conflict", content=b"too long to replay")
    assert response.status_code == 503
    assert outcomes.wait_for(1) == [("gave_up", 1)]


def _partial_upload(server, body_sent: bytes, length: int, cookie: str | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    head = f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
    if cookie:
        head += f"Cookie: zodbsession={cookie}\r\n"
    sock.sendall(head.encode() + b"\r\n" + body_sent)
    return sock


def test_client_gone_mid_body_runs_nothing(server, lab, outcomes, database):
    """Within max_replay_bytes the body is read first: the application never runs."""
    sock = _partial_upload(server, b"x" * 100, 10_000)
    sock.close()
    assert outcomes.wait_for(1) == [("client_gone", 1)]
    assert lab.ran == []
    assert committed(database)[0] == 0


def test_client_gone_mid_body_past_the_replay_limit_commits_nothing(lab, outcomes, database):
    """The application writes, reads part of the body, sees the disconnect and answers 200: aborted."""
    with serving(middleware(lab, outcomes, max_replay_bytes=16)) as running:
        sock = _partial_upload(running, b"x" * 100, 10_000)
        assert lab.gate.reached.wait(WAIT)
        sock.close()
        assert outcomes.wait_for(1) == [("client_gone", 1)]
    assert lab.ran == ["upload", "disconnected"]
    assert committed(database)[0] == 0
    with database.transaction() as conn:
        assert len(SessionManager().container(conn)) == 0


# -- the event loop and the session queue -------------------------------------------


def test_the_loop_serves_other_requests_while_a_commit_is_held(server, lab):
    """A request's commit waits in a worker thread at a gate; meanwhile others are served."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(lambda: client(server).post("/hold"))
        assert lab.gate.reached.wait(WAIT)
        with client(server) as c:
            answers = [c.post("/count").text for _ in range(5)]
        assert not held.done()
        lab.gate.opened.set()
        assert held.result(WAIT).text == "held and released"
    assert answers == ["1", "2", "3", "4", "5"]


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


def test_past_the_waiting_bound_a_request_gets_429_at_once(lab, outcomes, database):
    """One request holds the session, two wait: a fourth is refused without waiting; the three count."""
    mw = middleware(lab, outcomes, max_waiting_per_session=2)
    with serving(mw) as running:
        with client(running) as c:
            c.post("/count")
            cookie = c.cookies["zodbsession"]

        def slow() -> str:
            with client(running, cookie) as c:
                return c.post("/slow").text

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            accepted = [pool.submit(slow)]
            assert lab.gate.reached.wait(WAIT)
            accepted += [pool.submit(slow), pool.submit(slow)]
            _wait_until(lambda: mw.session_locks.waiting(cookie) == 2, "two requests waiting")
            with client(running, cookie) as c:
                refused = c.post("/slow")
            assert not accepted[0].done()
            lab.gate.opened.set()
            answers = sorted(f.result(WAIT) for f in accepted)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert answers == ["2", "3", "4"]
    assert committed(database, cookie)[1] == {"count": 4}
    assert ("session_busy", 1) in outcomes.wait_for(5)


def test_a_wait_for_the_session_past_its_timeout_gets_503(lab, outcomes, database):
    with serving(middleware(lab, outcomes, session_wait_timeout=0.2)) as running:
        with client(running) as c:
            c.post("/count")
            cookie = c.cookies["zodbsession"]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            holder = pool.submit(lambda: client(running, cookie).post("/slow").text)
            assert lab.gate.reached.wait(WAIT)
            with client(running, cookie) as c:
                late = c.post("/count")
            lab.gate.opened.set()
            assert holder.result(WAIT) == "2"
    assert late.status_code == 503
    assert int(late.headers["retry-after"]) >= 1
    assert committed(database, cookie)[1] == {"count": 2}
    assert ("session_wait_timeout", 1) in outcomes.wait_for(3)


def test_attempts_past_max_connections_wait_in_the_loop_for_one(lab, outcomes):
    """Four requests, two connections: two run (at the gate), two wait holding nothing."""
    mw = middleware(lab, outcomes, max_connections=2)
    with serving(mw) as running, concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(lambda: client(running).post("/slow").text) for _ in range(4)]
        _wait_until(lambda: len(lab.at_gate) == 2 and mw.connections_waiting == 2,
                    "two requests at the gate and two waiting for a connection")
        assert len(lab.at_gate) == 2
        lab.gate.opened.set()
        assert [f.result(WAIT) for f in answers] == ["1"] * 4
    assert len(lab.at_gate) == 4


def test_body_declared_over_max_request_body_gets_413_unread(lab, outcomes):
    with serving(middleware(lab, outcomes, max_request_body=10)) as running, client(running) as c:
        response = c.post("/count", content=b"x" * 11)
    assert response.status_code == 413
    assert outcomes.wait_for(1) == [("body_too_large", 1)]


def test_sixty_four_parallel_slow_requests_on_one_cookie_leave_other_clients_served(lab, outcomes,
                                                                                      database):
    """Issue 17 under ASGI: one served, MAX_WAITING queued, the rest refused at once; others get through."""
    mw = middleware(lab, outcomes)  # the default bound: MAX_WAITING waiting
    refused = 64 - 1 - MAX_WAITING
    with serving(mw) as running:
        with client(running) as c:
            c.post("/count")
            cookie = c.cookies["zodbsession"]

        def slow() -> tuple[int, str]:
            with client(running, cookie) as c:
                response = c.post("/slow")
                return response.status_code, response.text

        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            requests = [pool.submit(slow)]
            assert lab.gate.reached.wait(WAIT)
            requests += [pool.submit(slow) for _ in range(63)]
            _wait_until(lambda: sum(f.done() for f in requests) == refused
                        and mw.session_locks.waiting(cookie) == MAX_WAITING, "refused and queued")
            with client(running) as other:
                others = [other.post("/count").text for _ in range(3)]
            assert mw.session_locks.waiting(cookie) == MAX_WAITING  # the backlog is still there
            lab.gate.opened.set()
            answers = [f.result(WAIT) for f in requests]
    assert others == ["1", "2", "3"]
    accepted = sorted(text for status, text in answers if status == 200)
    assert accepted == [str(n) for n in range(2, 2 + 1 + MAX_WAITING)]
    assert sorted({status for status, _ in answers}) == [200, 429]
    assert committed(database, cookie)[1] == {"count": 2 + MAX_WAITING}


# -- streaming, lifespan, websockets ------------------------------------------------


def test_streaming_commits_at_the_first_chunk_and_discards_later_changes(lab, outcomes, database):
    with serving(middleware(lab, outcomes, streaming=True)) as running, client(running) as c:
        assert c.get("/stream").text == "first second"
        assert committed(database, c.cookies["zodbsession"])[1] == {"count": 1}


def test_streaming_conflict_at_the_first_chunk_is_retried_with_the_body(lab, outcomes, database):
    with serving(middleware(lab, outcomes, streaming=True)) as running, client(running) as c:
        response = c.post("/stream-conflict", content=b"streamed")
    assert response.text == "attempt 2: streamed"
    assert committed(database)[0] == "streamed"
    assert outcomes.wait_for(1) == [("committed", 2)]


def test_without_streaming_the_whole_response_is_held_for_the_commit(server, database):
    with client(server) as c:
        assert c.get("/stream").text == "first second"
        assert committed(database, c.cookies["zodbsession"])[1] == {"count": 2}


def test_lifespan_passes_through_both_ways(lab, outcomes):
    with serving(middleware(lab, outcomes)):
        assert lab.started.is_set()
        assert not lab.stopped.is_set()
    assert lab.stopped.is_set()


def test_websocket_scope_passes_through_untouched(lab, outcomes):
    """The websocket handler gets the server's own receive and send, and no session."""
    seen: list[Any] = []

    async def app(scope, receive, send):
        seen.append((scope, receive, send))

    mw = SessionMiddleware(app, lab.db)
    scope = {"type": "websocket", "path": "/ws", "headers": []}

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        pass

    asyncio.run(mw(scope, receive, send))
    assert seen == [(scope, receive, send)]
    assert "zodbsession.session" not in scope


def asgi_call(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    """One HTTP request straight into *app*, in a fresh event loop; the messages it sent."""
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": "POST", "path": "/count", "headers": [], "scheme": "http",
             **scope}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.parametrize(("scheme", "secure"), [("https", True), ("http", False)], ids=["https", "http"])
def test_secure_flag_follows_the_scheme(lab, outcomes, scheme, secure):
    start = asgi_call(middleware(lab, outcomes), {"scheme": scheme})[0]
    cookie = dict(start["headers"])[b"set-cookie"].decode()
    assert ("; Secure" in cookie) is secure


def test_several_cookie_headers_are_read_as_one(lab, outcomes, database):
    """HTTP/2 clients send one cookie header per cookie: the session's is found in any of them."""
    mw = middleware(lab, outcomes)
    start = asgi_call(mw, {})[0]
    session_id = dict(start["headers"])[b"set-cookie"].decode().split(";")[0].split("=", 1)[1]
    headers = [(b"cookie", b"theme=dark"), (b"cookie", f"zodbsession={session_id}".encode())]
    sent = asgi_call(mw, {"headers": headers})
    assert sent[-1]["body"] == b"2"
    assert committed(database, session_id)[1] == {"count": 2}


def test_join_outer_transaction_is_refused(lab):
    with pytest.raises(ValueError, match="join_outer_transaction"):
        SessionMiddleware(lab.app, lab.db, join_outer_transaction=True)


def test_run_in_connection_outside_a_request_says_so():
    from zodbsession.core.errors import NoActiveRequest

    with pytest.raises(NoActiveRequest):
        asyncio.run(run_in_connection(lambda conn: None))
    transaction.abort()
