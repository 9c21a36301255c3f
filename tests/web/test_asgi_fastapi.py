"""SessionMiddleware under FastAPI, on a real uvicorn on 127.0.0.1, driven by httpx clients.

FastAPI runs ``async def`` endpoints in the event loop and plain ``def``
ones in a thread pool; both see the request's session, and both are one
transaction with the application's own ZODB data.
"""

from __future__ import annotations

import concurrent.futures
from typing import Annotated, Any

import pytest
from asgikit import http_client, serving
from fastapi import Depends, FastAPI, Request
from persistent import Persistent
from ZODB import DB

from zodbsession import SessionManager, current_connection, current_session
from zodbsession.core.request_session import RequestSession
from zodbsession.web.asgi import SessionMiddleware, run_in_connection

WAIT = 10


class Tally(Persistent):
    """The application's own persistent data."""

    def __init__(self) -> None:
        self.value = 0


def session_of(request: Request) -> RequestSession:
    """The FastAPI dependency that hands an endpoint its session."""
    return request.scope["zodbsession.session"]


#: An endpoint's parameter of this type gets the request's session.
Session = Annotated[RequestSession, Depends(session_of)]


def make_app() -> FastAPI:
    api = FastAPI()

    @api.post("/count")
    async def count(session: Session) -> dict[str, Any]:
        session["count"] = session.get("count", 0) + 1
        return {"count": session["count"]}

    @api.post("/count-in-thread")
    def count_in_thread() -> dict[str, Any]:
        # A plain def endpoint runs in FastAPI's thread pool, in a copy of the
        # request's context: the registry's proxies work, and blocking ZODB
        # access is fine there (the loop thread does not touch the connection meanwhile).
        current_session["count"] = current_session.get("count", 0) + 1
        current_connection.root()["tally"].value += 1
        return {"count": current_session["count"]}

    @api.post("/tally/{amount}")
    async def tally(amount: int, session: Session) -> dict[str, Any]:
        tally = await run_in_connection(lambda conn: conn.root()["tally"])
        tally.value += amount
        session["last"] = amount
        if amount < 0:
            raise ValueError("negative amounts roll back the tally and the session")
        return {"tally": tally.value}

    @api.get("/state")
    async def state(session: Session) -> dict[str, Any]:
        tally = await run_in_connection(lambda conn: conn.root()["tally"].value)
        return {"count": session.get("count", 0), "last": session.get("last"), "tally": tally}

    return api


@pytest.fixture
def database(db: DB) -> DB:
    """Not the folder's MappingStorage: tests/conftest.py's FileStorage ``db``, with ``root()["tally"]``."""
    with db.transaction() as conn:
        conn.root()["tally"] = Tally()
    return db


@pytest.fixture
def server(database):
    app = SessionMiddleware(make_app(), database, retry_backoff=0, max_waiting_per_session=8)
    with serving(app) as running:
        yield running


def stored_count(db: DB, session_id: str) -> int:
    with db.transaction() as conn:
        return SessionManager().get(conn, session_id)["count"]


def test_sixteen_own_sessions_and_eight_on_one_keep_exact_counts(server, database):
    rounds = 3
    with http_client(server) as first:
        first.post("/count")
        shared = first.cookies["zodbsession"]

    def own() -> tuple[str, list[int]]:
        with http_client(server) as c:
            counts = [c.post("/count").json()["count"] for _ in range(rounds)]
            return c.cookies["zodbsession"], counts

    def on_shared() -> list[int]:
        with http_client(server, shared) as c:
            return [c.post("/count").json()["count"] for _ in range(rounds)]

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        owns = [pool.submit(own) for _ in range(16)]
        shares = [pool.submit(on_shared) for _ in range(8)]
        own_results = [f.result(WAIT * 3) for f in owns]
        shared_counts = sorted(n for f in shares for n in f.result(WAIT * 3))
    assert all(counts == list(range(1, rounds + 1)) for _, counts in own_results)
    assert len({cookie for cookie, _ in own_results}) == 16
    assert all(stored_count(database, cookie) == rounds for cookie, _ in own_results)
    assert shared_counts == list(range(2, 2 + 8 * rounds))
    assert stored_count(database, shared) == 1 + 8 * rounds


def test_thread_pool_endpoint_sees_the_session_through_the_registry(server, database):
    with http_client(server) as c:
        assert c.post("/count-in-thread").json() == {"count": 1}
        assert c.post("/count").json() == {"count": 2}
        assert c.get("/state").json() == {"count": 2, "last": None, "tally": 1}


def test_failing_endpoint_rolls_back_the_session_and_the_tally_together(server, database):
    with http_client(server) as c:
        assert c.post("/tally/5").json() == {"tally": 5}
        assert c.post("/tally/-3").status_code == 500
        assert c.get("/state").json() == {"count": 0, "last": 5, "tally": 5}
