"""Hostile input and stolen or fixed ids: the publisher's Cookie header, and the ids it hands out.

- Any Cookie header (random bytes, huge values, thousands of cookies,
  unicode, well-formed ids that do not exist, expired and revoked ids) is
  answered without a 5xx, writes nothing and stores no session when the
  application only reads; when it writes, the session gets an id of the
  server's choosing, never one the client sent (no fixation).
- Ids are 256 bits from ``secrets``, unique, and statistically uniform: a
  test that a weak generator would fail.
- ``revoke --user`` through the real CLI ends every session of that user;
  the cookie attributes follow the configuration through the real server.

Many related guarantees are pinned elsewhere; the README's "Guarantees" lists them.
"""

from __future__ import annotations

import base64
import collections
import io
import math
import secrets
import wsgiref.util
from collections.abc import Iterator
from typing import Any

import pytest
import transaction
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from serverproc import Client, ServerProcess, run_cli
from sharedkit import EPOCH, FakeClock
from ZODB import DB
from ZODB.FileStorage import FileStorage

from zodbsession import SessionManager, SessionPublisher
from zodbsession.core.session import SESSION_ID_BYTES, new_session_id
from zodbsession.core.store import ROOT_KEY

COOKIE = "zodbsession"


# -- fuzzing the Cookie header through the real publisher ---------------------------


class Site:
    """A publisher on a FileStorage holding one live, one expired and one revoked session."""

    def __init__(self, path: str) -> None:
        self.clock = FakeClock(EPOCH)
        self.db = DB(FileStorage(path))
        self.manager = SessionManager(idle_timeout=1800, clock=self.clock)
        self.writes = False
        self.publisher = SessionPublisher(self.app, self.db, manager=self.manager)
        self.expired = self._store(at=EPOCH - 7200)
        self.revoked = self._store(at=EPOCH)
        self.live = self._store(at=EPOCH)
        with self.db.transaction() as conn:
            self.manager.revoke(conn, self.revoked)

    def _store(self, at: float) -> str:
        now, self.clock.now = self.clock.now, at
        try:
            with self.db.transaction() as conn:
                session = self.manager.new(conn)
                session["secret"] = "mine"
                return session.id
        finally:
            self.clock.now = now

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["zodbsession.session"]
        seen = f"{session.get('secret')} {session.is_new}"
        if self.writes:
            session["visits"] = session.get("visits", 0) + 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [seen.encode()]

    def call(self, cookie: str) -> tuple[str, dict[str, str], bytes]:
        environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "HTTP_COOKIE": cookie}
        wsgiref.util.setup_testing_defaults(environ)
        environ["wsgi.input"] = io.BytesIO(b"")
        answer: dict[str, Any] = {}

        def start_response(status, headers, exc_info=None):
            answer["status"], answer["headers"] = status, headers
            return lambda data: None

        body = b"".join(self.publisher(environ, start_response))
        return answer["status"], dict(answer["headers"]), body

    def stored_ids(self) -> set[str]:
        tm = transaction.TransactionManager()
        conn = self.db.open(tm)
        try:
            return set(conn.root()[ROOT_KEY].sessions.keys())
        finally:
            tm.abort()
            conn.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    site = Site(str(tmp_path_factory.mktemp("hostile") / "Data.fs"))
    yield site
    site.db.close()


def url_safe_id(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


cookie_names = st.one_of(st.just(COOKIE), st.text(st.characters(codec="latin-1"), max_size=20))
cookie_values = st.one_of(
    st.binary(min_size=32, max_size=32).map(url_safe_id),  # well-formed, never issued
    st.text(st.characters(codec="latin-1"), max_size=60),
    st.text(max_size=60),  # unicode a real server would never pass on: still no 5xx
    st.integers(1_000, 40_000).map(lambda n: "A" * n),  # huge
    st.just('"'), st.just(";"), st.just("="),
)
many_cookies = st.lists(st.tuples(cookie_names, cookie_values), max_size=60).map(
    lambda pairs: "; ".join(f"{name}={value}" for name, value in pairs))
raw_headers = st.one_of(
    st.binary(max_size=3000).map(lambda raw: raw.decode("latin-1")),  # what a server passes on
    st.text(max_size=500),
    st.integers(1, 3000).map(lambda n: "; ".join(f"c{i}=v{i}" for i in range(n))),  # many cookies
    st.integers(16_000, 200_000).map(lambda n: f"{COOKIE}=" + "x" * n),  # over the parser's cap
    many_cookies,
)


@st.composite
def hostile_headers(draw: Any) -> tuple[str, str | None]:
    """A Cookie header, and which of the site's stored ids (by role) it names, if any."""
    header = draw(raw_headers)
    role = draw(st.sampled_from([None, None, "expired", "revoked", "live"]))
    if role is None:
        return header, None
    value = '"{id}"' if draw(st.booleans()) else "{id}"
    return f"{header}; {COOKIE}={value}", role


FUZZ = settings(max_examples=400, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@FUZZ
@given(drawn=hostile_headers())
def test_any_cookie_header_on_a_reading_app_writes_nothing_and_never_fails(site, drawn):
    template, role = drawn
    session_id = getattr(site, role) if role else ""
    header = template.replace("{id}", session_id) if role else template
    site.writes = False
    before_tid = site.db.storage.lastTransaction()
    before_ids = site.stored_ids()
    status, headers, body = site.call(header)
    assert status == "200 OK", (status, body)
    # Only the live session's own id is ever sent back: when a bad cookie of
    # the same name came first, to overwrite it in the client's jar.
    sent = headers.get("Set-Cookie", "").split(";")[0].partition("=")[2]
    assert sent == "" or (role == "live" and sent == session_id), headers
    assert site.db.storage.lastTransaction() == before_tid
    assert site.stored_ids() == before_ids
    # Only the live session's own cookie finds its data; nothing else does.
    event(f"found the live session: {body == b'mine False'}")
    if body != b"None True":
        assert body == b"mine False" and role == "live"


@FUZZ
@given(drawn=hostile_headers())
def test_a_write_under_any_cookie_gets_an_id_of_the_servers_choosing(site, drawn):
    """No fixation: whatever id the client sends, a new session never takes it."""
    template, role = drawn
    if role == "live":
        return  # the live session's own cookie writes into it, as it should
    header = template.replace("{id}", getattr(site, role)) if role else template
    site.writes = True
    status, headers, _body = site.call(header)
    assert status == "200 OK"
    issued = headers["Set-Cookie"].split(";")[0].partition("=")[2]
    assert len(issued) == 43 and issued not in header
    with site.db.transaction() as conn:
        site.manager.revoke(conn, issued)  # keep the site small for the next example


def test_expired_and_revoked_ids_never_come_back(site):
    site.writes = False
    for role in ("expired", "revoked"):
        status, headers, body = site.call(f"{COOKIE}={getattr(site, role)}")
        assert (status, body) == ("200 OK", b"None True")
        assert "Set-Cookie" not in headers


# -- ids --------------------------------------------------------------------------------


def _chi2_critical(df: int, z: float) -> float:
    """The chi-square value exceeded with the normal tail probability of *z* (Wilson-Hilferty)."""
    k = 2 / (9 * df)
    return df * (1 - k + z * math.sqrt(k)) ** 3


@pytest.fixture(scope="module")
def many_ids() -> list[str]:
    return [new_session_id() for _ in range(100_000)]


def test_ids_are_256_bits_from_secrets(monkeypatch):
    calls = []
    original = secrets.token_urlsafe

    def recording(nbytes: int) -> str:
        calls.append(nbytes)
        return original(nbytes)

    monkeypatch.setattr(secrets, "token_urlsafe", recording)
    session_id = new_session_id()
    # Drawn again when it starts with "-" (it would read as an option on a command line).
    assert calls and set(calls) == {32} and SESSION_ID_BYTES * 8 == 256
    assert len(base64.urlsafe_b64decode(session_id + "=")) == 32


def test_100k_ids_are_unique(many_ids):
    assert len(set(many_ids)) == len(many_ids)


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _chi2(counts: collections.Counter, symbols: str | range, total: int) -> float:
    expected = total / len(symbols)
    return sum((counts[symbol] - expected) ** 2 / expected for symbol in symbols)


def test_id_characters_are_uniformly_distributed(many_ids):
    """Chi-square of the 64 characters over the 41 positions that can hold any of them
    (100k ids), of the 63 possible first characters (never "-") and of the 16 possible
    last ones. A uniform generator fails it about once in a million runs; one that
    favours a single character by 5% fails it nearly always."""
    n = len(many_ids)
    middle = collections.Counter()
    for session_id in many_ids:
        middle.update(session_id[1:42])
    assert set(middle) == set(ALPHABET)
    assert _chi2(middle, ALPHABET, n * 41) < _chi2_critical(63, 4.75)
    first = collections.Counter(session_id[0] for session_id in many_ids)
    assert set(first) == set(ALPHABET) - {"-"}
    assert _chi2(first, ALPHABET.replace("-", ""), n) < _chi2_critical(62, 4.75)
    last = collections.Counter(session_id[42] for session_id in many_ids)
    assert set(last) == set("AEIMQUYcgkosw048")  # the last 4 bits, padded
    assert _chi2(last, "AEIMQUYcgkosw048", n) < _chi2_critical(15, 4.75)


def test_id_bytes_are_uniform_and_their_bits_balanced_at_every_position(many_ids):
    """Each of the 32 bytes takes its 256 values evenly (the first byte its 252: an id
    never starts with "-"), and each bit of bytes 1 to 31 is set in half the ids
    (within 6 standard deviations: 474 of 100k)."""
    raws = [base64.urlsafe_b64decode(session_id + "=") for session_id in many_ids]
    n = len(raws)
    critical = _chi2_critical(255, 5.5)  # 32 tests at about 2e-8 each
    for position in range(SESSION_ID_BYTES):
        values = collections.Counter(raw[position] for raw in raws)
        if position == 0:
            allowed = [v for v in range(256) if v >> 2 != 62]  # "-" is the 63rd character
            assert set(values) <= set(allowed)
            assert _chi2(values, allowed, n) < _chi2_critical(251, 5.5)
            continue
        assert _chi2(values, range(256), n) < critical, position
        for bit in range(8):
            ones = sum(count for value, count in values.items() if value >> bit & 1)
            assert abs(ones - n / 2) < 6 * math.sqrt(n / 4), (position, bit, ones)


def test_the_character_check_can_fail():
    """The same check on 20k ids from a generator that favours one character by 15% fails."""
    rng = secrets.SystemRandom()
    weights = [1.0] * 64
    weights[0] = 1.15
    biased = ["".join(rng.choices(ALPHABET, weights, k=41)) for _ in range(20_000)]
    counts = collections.Counter()
    for text in biased:
        counts.update(text)
    assert _chi2(counts, ALPHABET, len(biased) * 41) > _chi2_critical(63, 4.75)


# -- theft: revoke --user, cookie attributes, through the real processes --------------------


def test_revoke_user_through_the_cli_ends_every_session_of_that_user(tmp_path):
    """Alice is logged in from three browsers, Bob from one; ``revoke --user alice``
    (the server stopped: it holds the FileStorage) kills all three cookies, not Bob's."""
    env = {"ZODBSESSION_STORAGE_URI": "file://var/Data.fs"}
    with ServerProcess(tmp_path, env) as server:
        alices = [Client(server.url) for _ in range(3)]
        bob = Client(server.url)
        for browser, user in [*((b, "alice") for b in alices), (bob, "bob")]:
            assert browser.json("POST", "/api/counter")[0] == 200
            assert browser.json("POST", "/api/login", {"user": user})[0] == 200
        cookies = [browser.cookie() for browser in alices]
    result = run_cli("revoke", "--user", "alice", env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, "revoked 3 session(s)"), result.stderr
    with ServerProcess(tmp_path, env) as server:
        for browser, cookie in zip(alices, cookies, strict=True):
            status, data = browser.sharing_cookies(server.url).json("GET", "/api/session")
            assert status == 200 and data["user"] is None and data["data"] == {}
            assert browser.cookie() == cookie  # the browser still sends it: the server ignores it
        status, data = bob.sharing_cookies(server.url).json("GET", "/api/session")
        assert (data["user"], data["data"]) == ("bob", {"count": 1})


def test_cookie_attributes_follow_the_configuration_through_the_server(tmp_path):
    env = {"ZODBSESSION_STORAGE_URI": "file://var/Data.fs", "ZODBSESSION_COOKIE_NAME": "sid",
           "ZODBSESSION_COOKIE_SECURE": "true", "ZODBSESSION_COOKIE_SAMESITE": "Strict",
           "ZODBSESSION_COOKIE_PERSISTENT": "true", "ZODBSESSION_COOKIE_PATH": "/app",
           "ZODBSESSION_SESSIONS_MAX_LIFETIME": "7200"}
    with ServerProcess(tmp_path, env) as server:
        status, headers, _ = Client(server.url).request("POST", "/api/counter", b"")
    assert status == 200
    name_value, *attributes = [part.strip() for part in headers["Set-Cookie"].split(";")]
    assert name_value.startswith("sid=") and len(name_value) == 4 + 43
    assert sorted(attributes) == sorted(["Max-Age=7200", "Path=/app", "Secure", "HttpOnly",
                                         "SameSite=Strict"])
