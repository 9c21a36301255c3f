"""``zodbsession serve`` with an ASGI application: uvicorn, run like the WSGI path, as real processes."""

from __future__ import annotations

import json
import threading
import time

import pytest
from adminkit import TOKEN, admin_request
from serverproc import Client, ServerProcess, ZeoProcess, run_cli, wait_for

pytest.importorskip("uvicorn")

#: A raw ASGI 3 application with a lifespan: it records startup and shutdown in a file, counts
#: in the session when the middleware gives one, and ``/slow`` takes 1.5 s to be caught in flight.
ASGI_APP = '''
import asyncio
import json
import os

EVENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "events.log")


def record(what):
    with open(EVENTS, "a") as f:
        f.write(what + "\\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                record("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                record("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)
    session = scope.get("zodbsession.session")
    n = None
    if session is not None:
        n = session["n"] = session.get("n", 0) + 1
    body = json.dumps({"pid": os.getpid(), "n": n, "path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def failing_lifespan(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no cache server"})
        return
'''


@pytest.fixture
def asgi_env(tmp_path, env):
    (tmp_path / "asgiapp.py").write_text(ASGI_APP)
    return {**env, "ZODBSESSION_SERVER_APP": "asgiapp:app"}


def test_asgi_app_is_detected_and_served_on_uvicorn(tmp_path, asgi_env):
    with ServerProcess(tmp_path, asgi_env) as server:
        status, answer = Client(server.url).json("GET", "/hello")
        assert status == 200
        assert answer["path"] == "/hello"
    assert server.process.returncode == 0, server.log()
    assert "asgiapp:app (ASGI)" in server.log()
    assert "uvicorn" in server.log()
    assert (tmp_path / "events.log").read_text().split() == ["startup", "shutdown"]


def test_asgi_app_counts_in_its_session_across_restarts(tmp_path, asgi_env):
    with ServerProcess(tmp_path, asgi_env) as server:
        client = Client(server.url)
        assert client.json("POST", "/")[1]["n"] == 1
        assert client.json("POST", "/")[1]["n"] == 2
    with ServerProcess(tmp_path, asgi_env) as server:
        client.base_url = server.url
        assert client.json("POST", "/")[1]["n"] == 3


def test_sigterm_lets_the_asgi_request_in_flight_finish(tmp_path, asgi_env):
    server = ServerProcess(tmp_path, asgi_env).start()
    try:
        result = {}
        client = Client(server.url)
        worker = threading.Thread(target=lambda: result.update(r=client.json("GET", "/slow")))
        worker.start()
        time.sleep(0.5)  # the request is now inside the application
        assert server.stop() == 0
        worker.join(30)
    finally:
        server.kill()
    status, answer = result["r"]
    assert (status, answer["path"]) == (200, "/slow")
    assert "finishing requests in flight" in server.log()
    assert "database closed" in server.log()


def test_admin_listener_serves_beside_an_asgi_app(tmp_path, asgi_env):
    with ServerProcess(tmp_path, asgi_env, admin_token=TOKEN) as server:
        assert Client(server.url).json("GET", "/")[0] == 200
        status, _headers, body = admin_request(server, "GET", "/metrics")
    assert status == 200
    assert b"zodbsession_requests_total" in body or b"zodbsession_" in body


def test_asgi_can_be_forced_from_the_command_line(tmp_path, asgi_env):
    """``--asgi`` serves an app whose signature hides its interface (here a plain lambda-like wrapper)."""
    (tmp_path / "hidden.py").write_text(
        "from asgiapp import app as _app\n\n"
        "def app(*args):\n    return _app(*args)\n")
    with ServerProcess(tmp_path, asgi_env, "--app", "hidden:app", "--asgi") as server:
        assert Client(server.url).json("GET", "/x")[1]["path"] == "/x"


def test_a_failing_lifespan_startup_exits_2_in_one_line(tmp_path, asgi_env):
    result = run_cli("serve", "--app", "asgiapp:failing_lifespan", env=asgi_env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("zodbsession: ") and "failed to start" in last
    assert "Traceback" not in result.stderr


def test_asgi_workers_share_the_port_on_zeo(tmp_path, asgi_env):
    with ZeoProcess(tmp_path, {"ZODBSESSION_ZEO_STORAGE": str(tmp_path / "Data.fs")}) as zeo:
        env = {**asgi_env, "ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=2)}
        with ServerProcess(tmp_path, env, "--workers", "2") as server:
            pids = set()
            wait_for(lambda: pids.add(Client(server.url).json("GET", "/")[1]["pid"]) or len(pids) == 2,
                     timeout=60)
        assert server.process.returncode == 0, server.log()
    assert len(pids) == 2
    assert json.dumps("2 workers")[1:-1] in server.log()


STARLETTE_APP = '''
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def count(request):
    session = request.scope["zodbsession.session"]
    session["n"] = session.get("n", 0) + 1
    return JSONResponse({"n": session["n"]})


def create_app():
    return Starlette(routes=[Route("/count", count, methods=["POST"])])
'''


def test_a_starlette_factory_is_served_with_sessions(tmp_path, env):
    pytest.importorskip("starlette")
    (tmp_path / "starletteapp.py").write_text(STARLETTE_APP)
    with ServerProcess(tmp_path, env, "--app", "starletteapp:create_app()") as server:
        client = Client(server.url)
        assert client.json("POST", "/count") == (200, {"n": 1})
        assert client.json("POST", "/count") == (200, {"n": 2})
        assert Client(server.url).json("POST", "/count") == (200, {"n": 1})
    assert "(ASGI)" in server.log()
