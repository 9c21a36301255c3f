"""One session's parallel requests run one after another (``zodbsession.serialize_same_session``).

Two real threads send two requests on one session; the first holds its view
open until the second is seen waiting for the session's lock, so the order is
forced without any timing. Serialized, neither conflicts; not serialized, the
two overlap and the later commit conflicts and is retried.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import webtest
from pyramid.request import Request
from pyramidkit import apps_fixture, route

apps = pytest.fixture(apps_fixture)

WAIT = 30.0  # seconds: a bound on a hang, never reached when the code is right


def overlap_app(events: list[str], release: threading.Event, entered: threading.Event) -> Any:
    def slow(request: Request) -> dict[str, Any]:
        name = request.params["name"]
        attempt = request.environ["retry.attempt"]
        events.append(f"{name} enters (attempt {attempt})")
        request.session["n"] = request.session.get("n", 0) + 1
        if name == "first" and attempt == 0:
            entered.set()
            assert release.wait(WAIT)
        events.append(f"{name} leaves")
        return {"n": request.session["n"]}

    def setup(config: Any) -> None:
        route(config, "/seed", lambda request: request.session.update(n=0) or {})
        route(config, "/slow", slow)

    return setup


def run(app: webtest.TestApp, cookie: str, name: str, results: dict[str, Any]) -> None:
    client = webtest.TestApp(app.app)
    client.set_cookie("sid", cookie)
    results[name] = client.post("/slow", {"name": name}).json


def test_one_sessions_requests_run_one_at_a_time(apps):
    events: list[str] = []
    release, entered = threading.Event(), threading.Event()
    app = apps(overlap_app(events, release, entered))
    app.get("/seed")
    cookie = app.cookies["sid"]
    locks = app.registry.zodbsession.session_locks
    results: dict[str, Any] = {}
    first = threading.Thread(target=run, args=(app, cookie, "first", results))
    first.start()
    assert entered.wait(WAIT)
    second = threading.Thread(target=run, args=(app, cookie, "second", results))
    second.start()
    deadline = time.monotonic() + WAIT
    while locks.waiting(cookie) < 1:  # the second request is queued behind the first
        assert time.monotonic() < deadline
        time.sleep(0.01)
    release.set()
    first.join(WAIT)
    second.join(WAIT)
    assert events == ["first enters (attempt 0)", "first leaves",
                      "second enters (attempt 0)", "second leaves"]
    assert results == {"first": {"n": 1}, "second": {"n": 2}}


def test_without_serializing_the_overlap_conflicts_and_is_retried(apps):
    events: list[str] = []
    release, entered = threading.Event(), threading.Event()
    app = apps(overlap_app(events, release, entered), {"zodbsession.serialize_same_session": "false"})
    assert app.registry.zodbsession.session_locks is None
    app.get("/seed")
    cookie = app.cookies["sid"]
    results: dict[str, Any] = {}
    first = threading.Thread(target=run, args=(app, cookie, "first", results))
    first.start()
    assert entered.wait(WAIT)
    run(app, cookie, "second", results)  # runs to its commit while the first is inside its view
    release.set()
    first.join(WAIT)
    assert events[:3] == ["first enters (attempt 0)", "second enters (attempt 0)", "second leaves"]
    assert "first enters (attempt 1)" in events  # the first's commit conflicted: retried
    assert results == {"second": {"n": 1}, "first": {"n": 2}}


@pytest.mark.parametrize(("bounds", "status", "outcome"), [
    ({"max_waiting": 0}, 429, "session_busy"),
    ({"wait_timeout": 0.05}, 503, "session_wait_timeout"),
], ids=["queue-full", "waited-too-long"])
def test_a_request_past_the_sessions_queue_is_refused_with_retry_after(apps, bounds, status, outcome):
    from zodbsession.core.locks import KeyedLocks
    from zodbsession.core.observe import Observer

    reported: list[str] = []
    observer = Observer()
    observer.request_finished = lambda outcome, attempts, seconds: reported.append(outcome)  # type: ignore

    events: list[str] = []
    release, entered = threading.Event(), threading.Event()
    app = apps(overlap_app(events, release, entered))
    app.registry.zodbsession.session_locks = KeyedLocks(**bounds)
    app.get("/seed")
    app.registry.zodbsession.manager.observers.subscribe(observer)
    cookie = app.cookies["sid"]
    results: dict[str, Any] = {}
    first = threading.Thread(target=run, args=(app, cookie, "first", results))
    first.start()
    try:
        assert entered.wait(WAIT)
        client = webtest.TestApp(app.app)
        client.set_cookie("sid", cookie)
        refused = client.post("/slow", {"name": "second"}, expect_errors=True)
    finally:
        release.set()
        first.join(WAIT)
    assert refused.status_int == status and int(refused.headers["Retry-After"]) >= 1
    assert results == {"first": {"n": 1}}
    assert "second enters (attempt 0)" not in events
    assert sorted(reported) == sorted([outcome, "committed"])  # the refused one, and the first
