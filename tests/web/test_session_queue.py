"""One cookie must not hold the whole worker pool: the bounded queue of same-session requests.

``KeyedLocks`` (threads) and ``AsyncKeyedLocks`` (asyncio) refuse a request
at once when ``max_waiting`` already wait for its key, and one that waited
``wait_timeout``; the publisher answers those 429 and 503 with Retry-After.
End to end on a real waitress on 127.0.0.1: 64 parallel slow requests on one
cookie take five threads (one inside, four waiting), the rest are refused at
once, and another client is served while the backlog still exists.
Every wait in these tests is on an event the test sets, never on time.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from waitresskit import serving
from ZODB import DB

from zodbsession import SessionPublisher
from zodbsession.core.errors import SessionBusy, SessionWaitTimeout
from zodbsession.core.locks import MAX_WAITING, AsyncKeyedLocks, KeyedLocks
from zodbsession.core.store import ROOT_KEY

TIMEOUT = 30  # seconds: for every socket call, join and wait-until (a hang fails, never a figure)
COOKIE = "zodbsession"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


# -- the locks themselves ---------------------------------------------------------------


def test_past_max_waiting_a_request_is_refused_at_once():
    locks = KeyedLocks(max_waiting=2, wait_timeout=None)
    release = threading.Event()
    inside = threading.Event()
    outcomes: list[str] = []

    def holder() -> None:
        with locks.hold("s"):
            inside.set()
            release.wait(TIMEOUT)

    def waiter() -> None:
        with locks.hold("s"):
            outcomes.append("served")

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    inside.wait(TIMEOUT)
    threads += [threading.Thread(target=waiter) for _ in range(2)]
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: locks.waiting("s") == 2, "two waiting")
    with pytest.raises(SessionBusy) as refused:
        locks.hold("s").__enter__()
    assert (refused.value.waiting, refused.value.limit) == (3, 2)
    assert not isinstance(refused.value, SessionWaitTimeout)
    assert refused.value.retry_after >= 1
    assert locks.refused == 1
    with locks.hold("other"):  # another key is not held up
        pass
    release.set()
    for thread in threads:
        thread.join(TIMEOUT)
    assert outcomes == ["served", "served"]
    assert locks.waiting("s") == 0 and locks._locks == {}


def test_a_wait_past_its_timeout_is_refused_and_leaves_the_lock_usable():
    locks = KeyedLocks(max_waiting=4, wait_timeout=0.05)
    with locks.hold("s"):
        errors = []
        thread = threading.Thread(target=lambda: errors.append(_try_hold(locks, "s")))
        thread.start()
        thread.join(TIMEOUT)
    [error] = errors
    assert isinstance(error, SessionWaitTimeout)
    assert locks.timed_out == 1
    with locks.hold("s"):
        assert locks.waiting("s") == 0
    assert locks._locks == {}


def _try_hold(locks: KeyedLocks, key: str) -> SessionBusy | None:
    try:
        with locks.hold(key):
            return None
    except SessionBusy as exc:
        return exc


def test_retry_after_follows_how_long_holders_keep_the_lock():
    locks = KeyedLocks()
    assert locks.retry_after(0) == 1  # nothing measured yet: the floor
    locks._mean_hold = 0.8
    assert locks.retry_after(4) == 4


@pytest.mark.parametrize(("max_waiting", "wait_timeout"), [(-1, None), (None, 0)])
def test_locks_refuse_nonsense_bounds(max_waiting, wait_timeout):
    with pytest.raises(ValueError):
        KeyedLocks(max_waiting=max_waiting, wait_timeout=wait_timeout)


def test_asyncio_locks_have_the_same_bound_and_hold_no_thread():
    async def scenario() -> tuple[list[str], SessionBusy, SessionBusy]:
        locks = AsyncKeyedLocks(max_waiting=2, wait_timeout=None)
        release = asyncio.Event()
        served: list[str] = []

        async def holder() -> None:
            async with locks.hold("s"):
                await release.wait()
                served.append("holder")

        async def waiter(name: str) -> None:
            async with locks.hold("s"):
                served.append(name)

        tasks = [asyncio.create_task(holder())]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(waiter(f"w{n}")) for n in range(2)]
        while locks.waiting("s") < 2:
            await asyncio.sleep(0)
        try:
            async with locks.hold("s"):
                raise AssertionError("a third waiter was let in")
        except SessionBusy as exc:
            full = exc
        timed = AsyncKeyedLocks(max_waiting=4, wait_timeout=0.05)
        async with timed.hold("t"):
            try:
                async with timed.hold("t"):
                    raise AssertionError("the wait did not time out")
            except SessionBusy as exc:
                late = exc
        release.set()
        await asyncio.gather(*tasks)
        assert locks._locks == {} and timed._locks == {}
        return served, full, late

    served, full, late = asyncio.run(scenario())
    assert served == ["holder", "w0", "w1"]
    assert not isinstance(full, SessionWaitTimeout) and isinstance(late, SessionWaitTimeout)


# -- end to end on waitress -----------------------------------------------------------------


class SlowApp:
    """``/slow`` counts into the session and then waits for the test's ``release``; else answers at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.inside = 0
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            session = environ["zodbsession.session"]
            session["n"] = session.get("n", 0) + 1
            with self.lock:
                self.inside += 1
            self.release.wait(TIMEOUT)
        elif environ["PATH_INFO"] == "/make":
            environ["zodbsession.session"]["n"] = 0
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def call_into(results: list[Any], port: int, path: str, cookie: str | None = None) -> None:
    """``call``, for a thread: its answer, or the error it met, goes into *results*."""
    try:
        results.append(call(port, path, cookie))
    except Exception as exc:  # surfaced by the test's assertions on the statuses
        results.append((repr(exc), {}))


def call(port: int, path: str, cookie: str | None = None) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body=b"", headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def stored_n(db: DB, session_id: str) -> Any:
    with db.transaction() as conn:
        return conn.root()[ROOT_KEY].sessions[session_id]["n"]


def test_64_parallel_slow_requests_on_one_cookie_leave_threads_for_everyone_else(file_db):
    app = SlowApp()
    publisher = SessionPublisher(app, file_db, session_wait_timeout=None)
    locks = publisher.session_locks
    with serving(publisher) as port:
        _, headers = call(port, "/make")
        session_id = headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
        results: list[tuple[int, dict[str, str]]] = []
        clients = [threading.Thread(target=call_into, args=(results, port, "/slow", session_id))
                   for _ in range(64)]
        for client in clients:
            client.start()
        accepted = 1 + MAX_WAITING
        wait_until(lambda: len(results) == 64 - accepted and locks.waiting(session_id) == MAX_WAITING,
                   "the backlog full and every other same-cookie request refused")
        # The backlog exists (one inside, held by the test; four waiting): another client is served.
        other_status, _ = call(port, "/other")
        assert other_status == 200
        assert app.inside == 1 and locks.waiting(session_id) == MAX_WAITING
        assert not app.release.is_set()
        app.release.set()
        for client in clients:
            client.join(TIMEOUT)
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: accepted, 429: 64 - accepted}
    assert all(int(h["Retry-After"]) >= 1 for s, h in results if s == 429)
    assert app.inside == accepted
    assert stored_n(file_db, session_id) == accepted
    assert locks._locks == {}


def test_a_request_that_waits_past_the_timeout_gets_503_with_retry_after(file_db):
    app = SlowApp()
    publisher = SessionPublisher(app, file_db, session_wait_timeout=0.05)
    with serving(publisher) as port:
        _, headers = call(port, "/make")
        session_id = headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
        first: list[tuple[int, dict[str, str]]] = []
        holder = threading.Thread(target=call_into, args=(first, port, "/slow", session_id))
        holder.start()
        wait_until(lambda: app.inside == 1, "the first request inside")
        status, headers = call(port, "/slow", session_id)
        app.release.set()
        holder.join(TIMEOUT)
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert first[0][0] == 200
    assert stored_n(file_db, session_id) == 1
