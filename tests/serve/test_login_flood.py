"""A login flood from one address cannot lock out others: a real ``serve`` with a session cap.

Loopback addresses 127.0.0.x all reach a server on 127.0.0.1 (Linux), and
the server sees each as the client's address: the flood comes from
127.0.0.2, a newcomer signs up from 127.0.0.3, and a user logged in before
the flood keeps working from 127.0.0.4.
"""

from __future__ import annotations

import http.client
import json
import threading

import pytest
from serverproc import ServerProcess, pid_app_env

CAP = 30
BUDGET = 10  # new sessions and logins per address per minute


class Browser:
    """One client, from one loopback address, keeping its session cookie."""

    def __init__(self, port: int, address: str) -> None:
        self.port = port
        self.address = address
        self.cookie: str | None = None

    def post(self, path: str, payload: dict | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", path, json.dumps(payload or {}).encode())

    def session(self) -> dict:
        """``GET /api/session``: what the server finds for this cookie (it writes nothing)."""
        status, _, body = self.request("GET", "/api/session", None)
        assert status == 200, body
        return json.loads(body)

    def request(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                          source_address=(self.address, 0))
        try:
            headers = {"Content-Type": "application/json"}
            if self.cookie:
                headers["Cookie"] = f"zodbsession={self.cookie}"
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            body = response.read()
            set_cookie = response.getheader("Set-Cookie")
            if set_cookie:
                self.cookie = set_cookie.split(";", 1)[0].split("=", 1)[1] or None
            return response.status, dict(response.getheaders()), body
        finally:
            conn.close()


@pytest.fixture
def capped_server(tmp_path, env):
    env = {**env, "ZODBSESSION_SESSIONS_MAX_SESSIONS": str(CAP),
           "ZODBSESSION_SESSIONS_NEW_PER_ADDRESS_PER_MINUTE": str(BUDGET)}
    with ServerProcess(tmp_path, env) as server:
        yield server


def test_a_login_flood_from_one_address_leaves_sign_ups_and_logged_in_users_working(capped_server):
    carol = Browser(capped_server.port, "127.0.0.4")
    assert carol.post("/api/login", {"user": "carol"})[0] == 200
    flood_answers: list[int] = []
    retry_afters: set[str] = set()

    def flood() -> None:
        for n in range(200):
            status, headers, _ = Browser(capped_server.port, "127.0.0.2").post(
                "/api/login", {"user": f"mallory-{n}"})
            flood_answers.append(status)
            if status == 503:
                retry_afters.add(headers.get("Retry-After", ""))

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        counts = []
        for _ in range(20):  # carol works on while the flood runs
            status, _, body = carol.post("/api/counter")
            assert status == 200, body
            counts.append(json.loads(body)["count"])
        dave = Browser(capped_server.port, "127.0.0.3")
        status, _, body = dave.post("/api/login", {"user": "dave"})
        assert status == 200, body
        assert json.loads(body)["user"] == "dave"
    finally:
        flooder.join(300)
    assert counts == list(range(1, 21))
    assert flood_answers.count(200) == BUDGET  # the flood's burst, then refusals
    assert set(flood_answers) == {200, 503}
    assert all(value.isdigit() and int(value) >= 1 for value in retry_afters)
    # after the flood, both still work
    assert carol.post("/api/counter")[0] == 200
    assert dave.post("/api/counter")[0] == 200


def test_at_the_cap_sign_ups_from_many_addresses_evict_users_sessions_instead_of_refusing(capped_server):
    """Past the cap nobody new is refused: the least recently used sessions go, users' too.

    Least recently used to within the expiry index's resolution (its 10 s
    slots, the access time's ``access_resolution``): sessions made within the
    same few seconds are evicted in no particular order among themselves.
    """
    browsers = []
    for n in range(CAP + 6):  # each address within its budget
        browser = Browser(capped_server.port, f"127.0.2.{n + 1}")
        status, _, body = browser.post("/api/login", {"user": f"user-{n}"})
        assert status == 200, body
        browsers.append(browser)
    found = [b for b in browsers if not b.session()["new"]]
    assert len(found) == CAP  # six users' sessions were evicted to let the last six in
    assert browsers[-1] in found  # the newest is never the one evicted


def test_the_workers_of_one_serve_spend_one_budget_per_address(tmp_path, zeo):
    """``serve --workers 2``: what an address spent on one worker, the other does not give again.

    Two kept-alive connections from 127.0.0.2, each held by a different
    worker (each answer names its pid); a budget of one new session a minute:
    the first worker stores one, the second then refuses.
    """
    env = {"ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=5),
           "ZODBSESSION_SESSIONS_MAX_SESSIONS": str(CAP),
           "ZODBSESSION_SESSIONS_NEW_PER_ADDRESS_PER_MINUTE": "1",
           **pid_app_env(tmp_path)}
    with ServerProcess(tmp_path, env, "--workers", "2") as server:
        by_pid: dict[int, http.client.HTTPConnection] = {}
        spare: list[http.client.HTTPConnection] = []
        for _ in range(200):  # the kernel hands each new connection to one worker
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30,
                                              source_address=("127.0.0.2", 0))
            conn.request("GET", "/")  # reads, stores nothing: not charged
            response = conn.getresponse()
            assert response.status == 200
            pid = json.loads(response.read())["pid"]
            if pid in by_pid:
                spare.append(conn)
            else:
                by_pid[pid] = conn
            if len(by_pid) == 2:
                break
        try:
            assert len(by_pid) == 2, "every connection went to one worker"
            answers = []
            for pid, conn in by_pid.items():
                conn.request("POST", "/")  # no cookie: a new session, charged to 127.0.0.2
                response = conn.getresponse()
                body = response.read()
                answers.append((response.status, response.getheader("Retry-After"), pid, body))
            assert [status for status, *_ in answers] == [200, 503], answers
            assert json.loads(answers[0][3])["pid"] == list(by_pid)[0]
            assert answers[1][1] is not None and int(answers[1][1]) >= 1
        finally:
            for conn in [*by_pid.values(), *spare]:
                conn.close()
