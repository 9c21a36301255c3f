"""The request-transaction core driven as the ASGI front door drives it: from asyncio.

The application runs in the event loop's task; the ZODB steps (open, finish,
fail, close) run in worker threads through ``asyncio.to_thread``; the scope
is entered in the task, so ``current_session`` works in the application and,
``to_thread`` copying the context, in the hooks the commit runs. A real
conflict, made by a second connection, is retried by the same loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import transaction
from ZODB import DB

from zodbsession import SessionManager, current_session
from zodbsession.core.registry import before_commit, registry
from zodbsession.core.retry import RetryPolicy
from zodbsession.core.store import ROOT_KEY
from zodbsession.core.transact import Attempt, Ending, TransactionCore

App = Callable[[Attempt], Awaitable[str]]


@pytest.fixture
def core(database: DB) -> TransactionCore:
    manager = SessionManager()
    with database.transaction() as conn:
        manager.container(conn)
    return TransactionCore(database, manager=manager, retry=RetryPolicy(3, backoff=0))


async def handle(core: TransactionCore, cookie_id: str | None, app: App) -> Ending:
    """One request, as an ASGI middleware runs it."""
    run = core.attempts(cookie_id, where="POST /", request={"type": "http"})
    for attempt in run:
        try:
            await asyncio.to_thread(core.open, attempt, preload=True)
        except Exception as exc:
            ending = core.fail(attempt, exc)
            await asyncio.to_thread(core.close, attempt)
        else:
            core.enter(attempt)
            try:
                status = await app(attempt)
                ending = await asyncio.to_thread(core.finish, attempt, status, [])
            except Exception as exc:
                ending = await asyncio.to_thread(core.fail, attempt, exc)
            finally:
                core.leave()
                await asyncio.to_thread(core.close, attempt)
        pause = run.end(ending)
        if pause:
            await asyncio.sleep(pause)
    ending = run.ending
    core.report(ending)
    return ending


def stored(db: DB) -> dict[str, dict[str, Any]]:
    with db.transaction() as conn:
        return {sid: s.data() for sid, s in conn.root()[ROOT_KEY].sessions.items()}


def test_the_app_in_the_loop_and_the_commit_in_a_thread_see_the_same_scope(core, database):
    seen: dict[str, Any] = {}

    async def app(attempt: Attempt) -> str:
        seen["loop thread"] = threading.get_ident()
        current_session["greeting"] = "hello"
        registry().data["note"] = "for the hook"

        def hook() -> None:
            seen["hook thread"] = threading.get_ident()
            seen["hook data"] = registry().data["note"]
            current_session["stamped"] = True

        before_commit(hook)
        return "200 OK"

    ending = asyncio.run(handle(core, None, app))
    assert (ending.outcome.name, ending.committed, ending.attempts) == ("committed", True, 1)
    assert isinstance(ending.session_use.cookie, str)
    assert seen["hook thread"] != seen["loop thread"]
    assert seen["hook data"] == "for the hook"
    assert stored(database) == {ending.session_use.cookie: {"greeting": "hello", "stamped": True}}
    assert not registry.has()


def test_a_real_conflict_is_retried_by_the_async_loop(core, database):
    first = asyncio.run(handle(core, None, _writer({"n": 0})))
    session_id = first.session_use.cookie
    attempts = []

    async def app(attempt: Attempt) -> str:
        attempts.append(attempt.number)
        assert attempt.session.resolved  # preloaded in the worker thread
        attempt.session["n"] = attempt.session["n"] + 1
        if attempt.number == 1:
            await asyncio.to_thread(_write_behind, database, session_id)
        return "200 OK"

    ending = asyncio.run(handle(core, session_id, app))
    assert (ending.outcome.name, ending.attempts) == ("committed", 2)
    assert attempts == [1, 2]
    assert stored(database)[session_id] == {"n": 11}
    assert core.idle_managers  # every manager came back clean


def test_concurrent_requests_in_one_loop_each_see_their_own_session(core, database):
    gate = asyncio.Event()
    inside: list[str] = []

    def app_for(name: str) -> App:
        async def app(attempt: Attempt) -> str:
            current_session["name"] = name
            inside.append(name)
            await gate.wait()  # both are inside at once
            current_session["seen"] = current_session["name"]
            return "200 OK"
        return app

    async def both() -> list[Ending]:
        tasks = [asyncio.create_task(handle(core, None, app_for(name))) for name in ("a", "b")]
        while len(inside) < 2:
            await asyncio.sleep(0.001)
        gate.set()
        return await asyncio.gather(*tasks)

    endings = asyncio.run(both())
    assert set(inside) == {"a", "b"}  # (a retry after a conflict on the container may repeat one)
    assert sorted(stored(database)[e.session_use.cookie]["seen"] for e in endings) == ["a", "b"]
    by_id = stored(database)
    assert all(by_id[e.session_use.cookie]["seen"] == by_id[e.session_use.cookie]["name"] for e in endings)


def test_a_5xx_is_vetoed_and_an_exception_fails_with_its_row(core, database):
    async def vetoed(attempt: Attempt) -> str:
        current_session["x"] = 1
        return "503 Service Unavailable"

    async def raising(attempt: Attempt) -> str:
        current_session["x"] = 1
        raise RuntimeError("boom")

    assert asyncio.run(handle(core, None, vetoed)).outcome.name == "vetoed"
    ending = asyncio.run(handle(core, None, raising))
    assert ending.outcome.name == "app_exception"
    assert ending.answer()[0] == "500 Internal Server Error"
    assert stored(database) == {}


def _writer(data: dict[str, Any]) -> App:
    async def app(attempt: Attempt) -> str:
        for key, value in data.items():
            attempt.session[key] = value
        return "200 OK"
    return app


def _write_behind(db: DB, session_id: str) -> None:
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        conn.root()[ROOT_KEY].sessions[session_id]["n"] = 10
        tm.commit()
    finally:
        conn.close()


def test_an_abandoned_attempt_aborts_and_runs_its_after_abort_hooks(core, database):
    """A front door that sees its client go mid-body ends the attempt with the client_gone row."""
    from zodbsession.core.registry import after_abort

    ran = []

    async def scenario() -> Ending:
        attempt = core.attempt(None, where="POST /upload")
        await asyncio.to_thread(core.open, attempt)
        core.enter(attempt)
        try:
            current_session["half"] = "written"
            after_abort(ran.append, "aborted")
            ending = await asyncio.to_thread(core.abandon, attempt)
        finally:
            core.leave()
            await asyncio.to_thread(core.close, attempt)
        core.report(ending)
        return ending

    ending = asyncio.run(scenario())
    assert (ending.outcome.name, ending.committed, ending.own_answer) == ("client_gone", False, False)
    assert ran == ["aborted"]
    assert stored(database) == {}
