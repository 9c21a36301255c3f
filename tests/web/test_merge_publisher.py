"""The session merge seen from the publisher: parallel requests on one session, in threads.

With ``serialize_same_session=False`` (as between two app servers) two
requests on one session race. Each reads the session, then waits at a
barrier until the other has read it too, then writes: a real race on every
run, whatever the load. Changes to different keys both commit at the first
attempt; changes to one key conflict, and the publisher's retry makes the
second request see the first one's write.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sharedkit import wsgi_call

from zodbsession.core.store import get_container
from zodbsession.web.cookies import CookiePolicy
from zodbsession.web.wsgi.publisher import SessionPublisher

#: Bound, in seconds, of every wait on the other request.
WAIT = 30


class RacingApp:
    """``POST /<key>`` increments that session key, after every racer of the round has read it."""

    def __init__(self, racers: int) -> None:
        self.barrier = threading.Barrier(racers, timeout=WAIT)
        self.attempts: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.racing = False

    def __call__(self, environ: dict[str, Any], start_response):
        session = environ["zodbsession.session"]
        key = environ["PATH_INFO"].strip("/")
        count = session.get(key, 0)
        attempt = environ["zodbsession.attempt"]
        with self.lock:
            self.attempts.append((key, attempt))
        if self.racing and attempt == 1:
            self.barrier.wait()  # the other request has read the same snapshot
        session[key] = count + 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(count + 1).encode()]


@pytest.fixture
def racing(db, manager):
    app = RacingApp(2)
    publisher = SessionPublisher(app, db, manager=manager, serialize_same_session=False, retry_backoff=0)
    status, headers, _ = wsgi_call(publisher, "/seed", method="POST")
    assert status.startswith("200")
    name = CookiePolicy().name
    cookie = headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith(name + "=")
    app.attempts.clear()
    app.racing = True
    return app, publisher, cookie


def _race(publisher, cookie: str, paths: list[str]) -> list[tuple[str, dict, bytes]]:
    answers: list[Any] = [None] * len(paths)

    def request(index: int) -> None:
        answers[index] = wsgi_call(publisher, paths[index], method="POST", cookie=cookie)

    threads = [threading.Thread(target=request, args=(index,)) for index in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not any(thread.is_alive() for thread in threads)
    return answers


def _stored(publisher, cookie: str) -> dict:
    conn = publisher.db.open()
    try:
        return get_container(conn).get(cookie.split("=", 1)[1]).data()
    finally:
        conn.close()


def test_parallel_requests_on_different_keys_both_commit_at_the_first_attempt(racing):
    app, publisher, cookie = racing
    answers = _race(publisher, cookie, ["/cart", "/theme"])

    assert [status for status, _, _ in answers] == ["200 OK", "200 OK"]
    assert sorted(app.attempts) == [("cart", 1), ("theme", 1)]  # no retry: the commits merged
    assert _stored(publisher, cookie) == {"seed": 1, "cart": 1, "theme": 1}


def test_parallel_requests_on_one_key_conflict_and_the_retry_counts_both(racing):
    app, publisher, cookie = racing
    answers = _race(publisher, cookie, ["/count", "/count"])

    assert [status for status, _, _ in answers] == ["200 OK", "200 OK"]
    assert sorted(body for _, _, body in answers) == [b"1", b"2"]
    assert sorted(app.attempts) == [("count", 1), ("count", 1), ("count", 2)]  # one retry
    assert _stored(publisher, cookie) == {"seed": 1, "count": 2}
