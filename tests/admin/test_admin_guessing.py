"""Guessing the admin token: rate-limited per client address, logged in aggregate."""

from __future__ import annotations

import http.client
import logging
from pathlib import Path

import pytest
import webtest
from serverproc import ServerProcess
from ZODB import DB

from zodbsession.admin import AdminApp
from zodbsession.admin.access import FailureLimiter
from zodbsession.core.manager import SessionManager
from zodbsession.ops.metrics import Metrics
from zodbsession.testing import ManualClock

TOKEN = "a-long-enough-admin-token-for-tests"


#: Where the limiter tests' clocks (``ManualClock``) begin.
START = 1000.0


def test_a_client_past_its_allowance_waits_as_long_as_retry_after_says() -> None:
    clock = ManualClock(START)
    limiter = FailureLimiter(burst=3, per_second=0.5, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    wait = limiter.retry_after("10.0.0.1")
    assert wait == 2, "one try refills in 1 / 0.5 s"
    assert limiter.retry_after("10.0.0.2") == 0, "other clients are not affected"
    clock.now += wait - 0.01
    assert limiter.retry_after("10.0.0.1") > 0
    clock.now += 0.01
    assert limiter.retry_after("10.0.0.1") == 0


def test_the_limiter_remembers_a_bounded_number_of_clients() -> None:
    limiter = FailureLimiter(burst=1, max_clients=100, clock=ManualClock(START))
    for n in range(10_000):
        limiter.failed(f"client-{n}")
    assert len(limiter._buckets) == 100
    assert limiter.retry_after("client-9999") > 0, "the most recent are the ones kept"


def test_failures_are_logged_once_per_interval_with_their_count(caplog) -> None:
    clock = ManualClock(START)
    limiter = FailureLimiter(burst=5, log_interval=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="zodbsession.admin"):
        for _ in range(1000):
            if not limiter.retry_after("mallory"):
                limiter.failed("mallory")
        assert caplog.records == [], "nothing before the interval has passed"
        clock.now += 60
        limiter.failed("mallory")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "6 wrong token(s) from 1 client(s)" in line
    assert "995 request(s) refused with 429" in line


@pytest.fixture
def admin(db: DB) -> webtest.TestApp:
    manager = SessionManager()
    return webtest.TestApp(AdminApp(db, manager, Metrics.for_database(db, manager), token=TOKEN))


def test_wrong_bearer_tokens_get_429_after_the_allowance_even_with_the_right_one(admin) -> None:
    guesser = {"REMOTE_ADDR": "192.0.2.7"}
    statuses = [admin.get("/metrics", headers={"Authorization": "Bearer nope"},
                          extra_environ=guesser, expect_errors=True).status_int for _ in range(30)]
    assert statuses[:10] == [401] * 10
    assert set(statuses[10:]) == {429}
    refused = admin.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                        extra_environ=guesser, status=429)
    assert int(refused.headers["Retry-After"]) >= 1
    admin.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
              extra_environ={"REMOTE_ADDR": "192.0.2.8"}, status=200)


def test_wrong_login_forms_count_as_guesses(admin) -> None:
    guesser = {"REMOTE_ADDR": "192.0.2.9"}
    statuses = [admin.post("/login", {"token": "nope", "next": "/"}, extra_environ=guesser,
                           expect_errors=True).status_int for _ in range(12)]
    assert statuses == [401] * 10 + [429] * 2


def test_a_browser_without_credentials_is_not_counted(admin) -> None:
    for _ in range(50):
        admin.get("/", extra_environ={"REMOTE_ADDR": "192.0.2.10"}, status=401)
    admin.post("/login", {"token": TOKEN, "next": "/"}, extra_environ={"REMOTE_ADDR": "192.0.2.10"},
               status=303)


def test_a_real_server_answers_a_guessing_loop_with_429_and_few_log_lines(tmp_path: Path) -> None:
    """One keep-alive connection sends 500 wrong Bearer tokens, as fast as it can."""
    with ServerProcess(tmp_path, {}, admin_token=TOKEN) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.admin_port, timeout=30)
        statuses = []
        for _ in range(500):
            connection.request("GET", "/metrics", headers={"Authorization": "Bearer guess"})
            answer = connection.getresponse()
            answer.read()
            statuses.append(answer.status)
        connection.close()
        log = server.log()
    assert statuses.count(401) <= 15, "the allowance plus what refills during the loop"
    assert statuses.count(429) >= 485
    assert log.count("wrong token") <= 2
