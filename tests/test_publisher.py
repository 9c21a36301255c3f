"""SessionPublisher end to end: a real application through WebTest on a real ZODB.

Every request goes through ``wsgiref.validate.validator`` twice: around the
publisher (as a server sees it) and around the application (as the publisher
calls it). What was committed is always checked from a fresh connection with
a transaction manager of its own, never through the request's connection.
"""

from __future__ import annotations

import hashlib
import io
import wsgiref.util
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest
import transaction
import webtest
from transaction._transaction import Status
from transaction.interfaces import NoTransaction
from ZODB import DB
from ZODB.MappingStorage import MappingStorage
from ZODB.POSException import ConflictError, ReadConflictError

from zodbsession import (
    CookiePolicy,
    PublishError,
    Redirect,
    SessionManager,
    SessionPublisher,
    registry,
)
from zodbsession.store import ROOT_KEY

COOKIE = "zodbsession"
TEXT = [("Content-Type", "text/plain; charset=utf-8")]

# -- helpers -----------------------------------------------------------------


class Clock:
    """A clock moved by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database() -> Iterator[DB]:
    """A ZODB database on a MappingStorage, with ``root()["app"]`` = 0."""
    db = DB(MappingStorage())
    with db.transaction() as conn:
        conn.root()["app"] = 0
    yield db
    db.close()


def app_from(action: Callable[[dict[str, Any]], Any], status: str = "200 OK",
             headers: list[tuple[str, str]] | None = None) -> Callable:
    """A WSGI application that runs *action(environ)* and answers with its text."""

    def app(environ, start_response):
        result = action(environ)
        body = result if isinstance(result, bytes) else str(result).encode("utf-8")
        start_response(status, TEXT + list(headers or []))
        return [body]

    return app


def publisher(app: Callable, db: DB, **options: Any) -> SessionPublisher:
    """The publisher around a validated *app*; no back-off unless asked."""
    options.setdefault("retry_backoff", 0)
    return SessionPublisher(validator(app), db, **options)


def client(pub: SessionPublisher, **options: Any) -> webtest.TestApp:
    """WebTest around the validated publisher; ``.publisher`` swaps its app."""
    testapp = webtest.TestApp(validator(pub), **options)
    testapp.publisher = pub
    return testapp


def request(testapp: webtest.TestApp, path: str = "/", *, cookie: str | None = None,
            method: str = "GET", **options: Any) -> webtest.TestResponse:
    """A request carrying exactly *cookie* as its Cookie header (the jar is emptied)."""
    testapp.cookiejar.clear()
    headers = dict(options.pop("headers", {}))
    if cookie is not None:
        headers["Cookie"] = cookie
    options.setdefault("expect_errors", True)
    return getattr(testapp, method.lower())(path, headers=headers, **options)


def set_cookies(response: webtest.TestResponse) -> list[dict[str, Any]]:
    """The Set-Cookie headers, parsed: name, value and lower-cased attributes."""
    cookies = []
    for header in response.headers.getall("Set-Cookie"):
        first, *attributes = [part.strip() for part in header.split(";")]
        name, _, value = first.partition("=")
        attrs = {}
        for attribute in attributes:
            key, _, val = attribute.partition("=")
            attrs[key.lower()] = val
        cookies.append({"name": name, "value": value, "attrs": attrs, "raw": header})
    return cookies


def issued_id(response: webtest.TestResponse) -> str:
    """The one session id the response handed out."""
    cookies = set_cookies(response)
    assert len(cookies) == 1, cookies
    assert cookies[0]["value"], cookies
    return cookies[0]["value"]


def stored(db: DB) -> dict[str, dict[str, Any]]:
    """{session_id -> data} of every committed session, read from a fresh connection."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        container = conn.root().get(ROOT_KEY)
        if container is None:
            return {}
        return {sid: session.data() for sid, session in container.sessions.items()}
    finally:
        tm.abort()
        conn.close()


def stored_user(db: DB, session_id: str) -> str | None:
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        return conn.root()[ROOT_KEY].sessions[session_id].user_id
    finally:
        tm.abort()
        conn.close()


def app_value(db: DB) -> Any:
    """The application's own object, ``root()["app"]``, as committed."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        return conn.root()["app"]
    finally:
        tm.abort()
        conn.close()


def open_connections(db: DB) -> list[Any]:
    """The connections of *db* currently lent out (not back in the pool)."""
    return [conn for conn in db.pool.all if conn.opened]


def create_session(testapp: webtest.TestApp, **data: Any) -> str:
    """Store a session holding *data* through the publisher's ``/write`` convention."""
    response = testapp.post("/", params={k: str(v) for k, v in data.items()})
    return issued_id(response)


def writer_app(environ: dict[str, Any]) -> str:
    """Copies form fields into the session; the action behind ``create_session``."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length).decode()
    session = environ["zodbsession.session"]
    for pair in filter(None, body.split("&")):
        key, _, value = pair.partition("=")
        session[key] = value
    return "written"


def environ_for(method: str = "GET", body: bytes = b"", **extra: Any) -> dict[str, Any]:
    """A complete WSGI environ, for calling the publisher without WebTest."""
    environ: dict[str, Any] = {"REQUEST_METHOD": method}
    wsgiref.util.setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ.setdefault("QUERY_STRING", "")
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    environ.update(extra)
    return environ


class Recorder:
    """Collects what start_response was called with."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []

    def __call__(self, status, headers, exc_info=None):
        self.status = status
        self.headers = headers
        return lambda data: None


# -- commit and abort ----------------------------------------------------------


def test_success_commits_session_and_application_data(database):
    def action(environ):
        environ["zodbsession.session"]["cart"] = ["apple"]
        environ["zodbsession.connection"].root()["app"] = 42
        return "ok"

    response = client(publisher(app_from(action), database)).get("/")
    assert response.status_int == 200
    session_id = issued_id(response)
    assert stored(database) == {session_id: {"cart": ["apple"]}}
    assert app_value(database) == 42


def test_exception_aborts_session_and_application_data_with_generic_500(database):
    testapp = client(publisher(app_from(writer_app), database))
    session_id = create_session(testapp, cart="apple")
    before = database.storage.lastTransaction()

    def action(environ):
        environ["zodbsession.session"]["cart"] = "pear"
        environ["zodbsession.session"].login("mallory")
        environ["zodbsession.connection"].root()["app"] = 99
        raise RuntimeError("secret-detail of the failure")

    testapp.publisher.app = validator(app_from(action))
    response = request(testapp, cookie=f"{COOKIE}={session_id}")
    assert response.status_int == 500
    assert response.body == b"internal server error"
    assert b"Traceback" not in response.body and b"secret-detail" not in response.body
    assert response.headers.getall("Set-Cookie") == []
    assert stored(database) == {session_id: {"cart": "apple"}}
    assert stored_user(database, session_id) is None
    assert app_value(database) == 0
    assert database.storage.lastTransaction() == before


def test_publish_error_commits_session_changes(database):
    def action(environ):
        environ["zodbsession.session"]["failed_logins"] = 1
        environ["zodbsession.connection"].root()["app"] = 7
        raise PublishError("wrong password", status="403 Forbidden")

    response = request(client(publisher(app_from(action), database)))
    assert response.status_int == 403
    assert response.body == b"wrong password"
    session_id = issued_id(response)
    assert stored(database) == {session_id: {"failed_logins": 1}}
    assert app_value(database) == 7


def test_redirect_commits_flash_message_set_before_it(database):
    def action(environ):
        session = environ["zodbsession.session"]
        if environ["PATH_INFO"] == "/save":
            session["flash"] = "saved!"
            raise Redirect("/next")
        return session.pop("flash", "no flash")

    testapp = client(publisher(app_from(action), database))
    response = testapp.post("/save")
    assert response.status_int == 303
    assert response.headers["Location"].endswith("/next")
    assert testapp.get("/next").text == "saved!"
    assert testapp.get("/next").text == "no flash"


def test_5xx_returned_by_application_aborts(database):
    def action(environ):
        environ["zodbsession.session"]["x"] = 1
        environ["zodbsession.connection"].root()["app"] = 5
        return "maintenance"

    pub = publisher(app_from(action, status="503 Service Unavailable"), database)
    response = request(client(pub))
    assert response.status_int == 503
    assert response.text == "maintenance"
    assert response.headers.getall("Set-Cookie") == []
    assert stored(database) == {}
    assert app_value(database) == 0


@pytest.mark.parametrize("send_header", [True, False], ids=["vetoed", "not-vetoed"])
def test_custom_commit_veto_decides_on_header(database, send_header):
    calls = []

    def veto(environ, status, headers):
        calls.append(status)
        return any(name.lower() == "x-no-commit" for name, _ in headers)

    def action(environ):
        environ["zodbsession.session"]["x"] = 1
        environ["zodbsession.connection"].root()["app"] = 3
        return "ok"

    headers = [("X-No-Commit", "1")] if send_header else []
    pub = publisher(app_from(action, headers=headers), database, commit_veto=veto)
    response = request(client(pub))
    assert response.status_int == 200
    assert calls == ["200 OK"]
    if send_header:
        assert response.headers.getall("Set-Cookie") == []
        assert stored(database) == {}
        assert app_value(database) == 0
    else:
        assert stored(database) == {issued_id(response): {"x": 1}}
        assert app_value(database) == 3


def test_commit_failing_before_vote_answers_500_and_stores_nothing(database):
    """An unpicklable value fails in the commit itself: a plain abort, not a retry."""
    calls = []

    def action(environ):
        calls.append(1)
        environ["zodbsession.session"]["callback"] = lambda: None
        environ["zodbsession.connection"].root()["app"] = 11
        return "ok"

    response = request(client(publisher(app_from(action), database)))
    assert response.status_int == 500
    assert response.body == b"internal server error"
    assert calls == [1]
    assert response.headers.getall("Set-Cookie") == []
    assert stored(database) == {}
    assert app_value(database) == 0
    assert open_connections(database) == []


def test_forget_changes_mid_request_goes_on_in_a_fresh_transaction(database):
    """``forget_changes`` aborts what came before it; the request still succeeds."""

    def action(environ):
        session = environ["zodbsession.session"]
        session["early"] = 1
        environ["zodbsession.connection"].root()["app"] = 1
        session.forget_changes()
        session["late"] = 2
        return ",".join(sorted(session))

    response = request(client(publisher(app_from(action), database)))
    assert response.status_int == 200
    assert response.text == "late"
    assert stored(database) == {issued_id(response): {"late": 2}}
    assert app_value(database) == 0


@pytest.mark.parametrize("streaming", [False, True], ids=["buffered", "streaming"])
def test_write_callable_output_comes_before_the_iterable(database, streaming):
    def app(environ, start_response):
        write = start_response("200 OK", TEXT)
        write(b"written;")
        environ["zodbsession.session"]["x"] = 1
        return [b"returned"]

    response = client(publisher(app, database, streaming=streaming)).get("/")
    assert response.body == b"written;returned"
    assert stored(database) == {issued_id(response): {"x": 1}}


def test_app_that_never_calls_start_response_gets_500_and_aborts(database):
    def app(environ, start_response):
        environ["zodbsession.session"]["x"] = 1
        return [b"forgot the status"]

    response = request(client(SessionPublisher(app, database)))
    assert response.status_int == 500
    assert response.body == b"internal server error"
    assert stored(database) == {}


# -- retries -------------------------------------------------------------------


@pytest.mark.parametrize("error", [ConflictError, ReadConflictError], ids=lambda e: e.__name__)
def test_conflict_raised_by_app_is_retried_with_replayed_body_and_fresh_environ(database, error):
    attempts = []
    body = bytes(range(256)) * 40  # binary, 10 KiB

    def action(environ):
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        attempts.append({
            "attempt": environ["zodbsession.attempt"],
            "digest": hashlib.sha256(data).hexdigest(),
            "left_over": "test.mark" in environ,
        })
        environ["test.mark"] = True
        environ["zodbsession.session"]["attempt"] = environ["zodbsession.attempt"]
        if environ["zodbsession.attempt"] < 3:
            raise error("simulated")
        return "done"

    response = client(publisher(app_from(action), database)).post(
        "/", params=body, content_type="application/octet-stream")
    assert response.status_int == 200
    digest = hashlib.sha256(body).hexdigest()
    assert attempts == [{"attempt": n, "digest": digest, "left_over": False} for n in (1, 2, 3)]
    assert stored(database) == {issued_id(response): {"attempt": 3}}
    assert registry.has() is False


def test_real_conflict_at_commit_is_retried_without_lost_update(database):
    """A concurrent commit to the same session lands between the app's read and
    the publisher's commit; the commit conflicts, the retry reads both."""
    testapp = client(publisher(app_from(writer_app), database))
    session_id = create_session(testapp, seed="1")
    attempts = []

    def concurrent_append(item):
        tm = transaction.TransactionManager()
        conn = database.open(tm)
        try:
            session = conn.root()[ROOT_KEY].sessions[session_id]
            session["items"] = session.get("items", []) + [item]
            tm.commit()
        finally:
            conn.close()

    def action(environ):
        session = environ["zodbsession.session"]
        items = session.get("items", [])
        attempts.append(environ["zodbsession.attempt"])
        if environ["zodbsession.attempt"] == 1:
            concurrent_append("other")
        session["items"] = items + ["request"]
        return "ok"

    testapp.publisher.app = validator(app_from(action))
    response = request(testapp, cookie=f"{COOKIE}={session_id}")
    assert response.status_int == 200
    assert attempts == [1, 2]
    assert stored(database)[session_id]["items"] == ["other", "request"]
    assert response.headers.getall("Set-Cookie") == []


@pytest.mark.parametrize("retry_attempts", [1, 3, 5], ids=lambda n: f"attempts={n}")
@pytest.mark.parametrize("where", ["app", "commit"])
def test_every_attempt_conflicting_answers_503_with_retry_after(database, retry_attempts, where):
    calls = []

    def action(environ):
        calls.append(environ["zodbsession.attempt"])
        environ["zodbsession.session"]["x"] = 1
        root = environ["zodbsession.connection"].root()
        root["app"] = root["app"] + 100
        if where == "app":
            raise ConflictError("simulated")
        tm = transaction.TransactionManager()
        conn = database.open(tm)
        conn.root()["app"] += 1  # commits under the request: its own commit conflicts
        tm.commit()
        conn.close()
        return "ok"

    pub = publisher(app_from(action), database, retry_attempts=retry_attempts)
    response = request(client(pub))
    assert response.status_int == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers.getall("Set-Cookie") == []
    assert calls == list(range(1, retry_attempts + 1))
    assert stored(database) == {}
    assert app_value(database) == (retry_attempts if where == "commit" else 0)
    assert open_connections(database) == []


@pytest.mark.parametrize("conflict", [True, False], ids=["conflict", "success"])
def test_body_over_max_replay_bytes_gets_one_attempt_and_is_read_whole(database, conflict):
    body = b"x" * 5000
    calls = []

    def action(environ):
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        calls.append(len(data))
        if conflict:
            raise ConflictError("simulated")
        return hashlib.sha256(data).hexdigest()

    pub = publisher(app_from(action), database, max_replay_bytes=1024)
    response = client(pub).post("/", params=body, content_type="application/octet-stream",
                                expect_errors=True)
    assert calls == [5000]
    if conflict:
        assert response.status_int == 503
    else:
        assert response.status_int == 200
        assert response.text == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("size", [100, 5000], ids=["small", "over-limit"])
def test_chunked_body_is_read_whole_and_replayed_only_when_small(database, size):
    """A body without CONTENT_LENGTH (``wsgi.input_terminated``) is buffered up to
    the limit; beyond it the app still reads every byte, on one attempt only."""
    body = bytes(i % 251 for i in range(size))
    reads = []

    def app(environ, start_response):
        chunks = []
        while True:
            chunk = environ["wsgi.input"].read(333)
            if not chunk:
                break
            chunks.append(chunk)
        reads.append(b"".join(chunks))
        if environ["zodbsession.attempt"] == 1:
            raise ConflictError("simulated")
        start_response("200 OK", TEXT)
        return [b"ok"]

    pub = SessionPublisher(app, database, retry_backoff=0, max_replay_bytes=1024)
    environ = environ_for("POST", body)
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    recorder = Recorder()
    result = pub(environ, recorder)
    b"".join(result)
    if size <= 1024:
        assert recorder.status == "200 OK"
        assert reads == [body, body]
    else:
        assert recorder.status.startswith("503")
        assert reads == [body]


# -- commit outcome unknown -----------------------------------------------------


class FinishFails:
    """A data manager whose tpc_finish fails, as a storage that went away would."""

    transaction_manager = None

    def __init__(self, key: str) -> None:
        self.key = key

    def sortKey(self) -> str:  # noqa: N802 (the IDataManager spelling)
        return self.key

    def tpc_begin(self, txn): ...

    def commit(self, txn): ...

    def tpc_vote(self, txn): ...

    def tpc_finish(self, txn):
        raise OSError("storage went away during the finish")

    def tpc_abort(self, txn): ...

    def abort(self, txn): ...


class VoteFails(FinishFails):
    """A data manager that refuses in tpc_vote with *error*."""

    def __init__(self, key: str, error: Exception) -> None:
        super().__init__(key)
        self.error = error

    def tpc_vote(self, txn):
        raise self.error

    def tpc_finish(self, txn): ...


@pytest.mark.parametrize("key", ["\x00 finishes first", "~ finishes after the connection"],
                         ids=["before-connection", "after-connection"])
def test_failure_after_vote_answers_503_and_is_not_retried(database, key):
    calls = []

    def action(environ):
        calls.append(environ["zodbsession.attempt"])
        environ["zodbsession.session"]["x"] = 1
        environ["zodbsession.connection"].transaction_manager.get().join(FinishFails(key))
        return "ok"

    testapp = client(publisher(app_from(action), database))
    response = request(testapp)
    assert response.status_int == 503
    assert response.headers["Retry-After"] == "1"
    assert b"unknown" in response.body
    assert calls == [1]
    assert registry.has() is False
    assert open_connections(database) == []
    # the publisher and its pool are still healthy afterwards
    testapp.publisher.app = validator(app_from(writer_app))
    session_id = create_session(testapp, y=2)
    assert stored(database)[session_id] == {"y": "2"}


@pytest.mark.parametrize(("error", "status", "calls_expected"), [
    (ValueError("refused"), 500, 1),
    (ConflictError("refused"), 200, 2),
], ids=["plain-error", "conflict"])
def test_failure_in_vote_is_a_plain_abort_not_outcome_unknown(database, error, status,
                                                              calls_expected):
    calls = []

    def action(environ):
        calls.append(1)
        environ["zodbsession.session"]["x"] = 1
        if len(calls) == 1:
            tm = environ["zodbsession.connection"].transaction_manager
            tm.get().join(VoteFails("\x00 votes first", error))
        return "ok"

    response = request(client(publisher(app_from(action), database)))
    assert response.status_int == status
    assert len(calls) == calls_expected
    assert len(stored(database)) == (1 if status == 200 else 0)


# -- cookies ---------------------------------------------------------------------


def test_new_session_cookie_has_safe_defaults(database):
    response = request(client(publisher(app_from(writer_app), database)), method="POST",
                       params="a=1")
    [cookie] = set_cookies(response)
    assert cookie["name"] == COOKIE
    assert cookie["attrs"] == {"path": "/", "httponly": "", "samesite": "Lax"}


@pytest.mark.parametrize(("secure", "scheme", "expected"), [
    ("auto", "https", True),
    ("auto", "http", False),
    (True, "http", True),
    (False, "https", False),
], ids=["auto-https", "auto-http", "always", "never"])
def test_secure_flag_follows_policy_and_scheme(database, secure, scheme, expected):
    pub = publisher(app_from(writer_app), database, cookie=CookiePolicy(secure=secure))
    testapp = client(pub, extra_environ={"wsgi.url_scheme": scheme})
    [cookie] = set_cookies(request(testapp, method="POST", params="a=1"))
    assert ("secure" in cookie["attrs"]) is expected


def test_cookie_policy_name_path_samesite_and_max_age(database):
    policy = CookiePolicy(name="sid", path="/shop", max_age=3600, samesite="Strict",
                          domain="example.org")
    testapp = client(publisher(app_from(writer_app), database, cookie=policy))
    response = request(testapp, method="POST", params="a=1")
    [cookie] = set_cookies(response)
    assert cookie["name"] == "sid"
    assert cookie["attrs"] == {"max-age": "3600", "path": "/shop", "domain": "example.org",
                               "httponly": "", "samesite": "Strict"}
    # and the configured name is the one read back
    session_id = cookie["value"]
    testapp.publisher.app = validator(app_from(lambda env: env["zodbsession.session"]["a"]))
    assert request(testapp, cookie=f"sid={session_id}").text == "1"
    assert request(testapp, cookie=f"{COOKIE}={session_id}").status_int == 500  # KeyError


def test_plain_read_of_existing_session_sends_no_cookie_and_writes_nothing(database):
    testapp = client(publisher(app_from(writer_app), database))
    session_id = create_session(testapp, name="ada")
    before = database.storage.lastTransaction()
    testapp.publisher.app = validator(app_from(lambda env: env["zodbsession.session"]["name"]))
    response = request(testapp, cookie=f"{COOKIE}={session_id}")
    assert response.text == "ada"
    assert response.headers.getall("Set-Cookie") == []
    assert database.storage.lastTransaction() == before


READ_ONLY_ACTIONS = {
    "untouched": lambda session: "nothing",
    "get": lambda session: session.get("x"),
    "contains": lambda session: "x" in session,
    "is_new": lambda session: session.is_new,
    "id": lambda session: len(session.id),
    "iterate": lambda session: list(session),
}


@pytest.mark.parametrize("use", READ_ONLY_ACTIONS.values(), ids=READ_ONLY_ACTIONS.keys())
def test_new_session_only_read_sends_no_cookie_and_stores_nothing(database, use):
    pub = publisher(app_from(lambda env: use(env["zodbsession.session"])), database)
    before = database.storage.lastTransaction()
    response = request(client(pub))
    assert response.status_int == 200
    assert response.headers.getall("Set-Cookie") == []
    assert stored(database) == {}
    assert database.storage.lastTransaction() == before


def login_app(environ):
    session = environ["zodbsession.session"]
    path = environ["PATH_INFO"]
    if path == "/login":
        session.login("alice")
    elif path == "/logout":
        session.logout()
    elif path == "/write":
        session["cart"] = ["book"]
    return f"user={session.user_id} new={session.is_new} cart={session.get('cart')}"


def test_login_rotates_id_and_kills_the_old_one(database):
    testapp = client(publisher(app_from(login_app), database))
    old_id = issued_id(testapp.get("/write"))
    response = testapp.get("/login")
    new_id = issued_id(response)
    assert new_id != old_id
    assert response.text == "user=alice new=False cart=['book']"
    assert set(stored(database)) == {new_id}
    stale = request(testapp, "/", cookie=f"{COOKIE}={old_id}")
    assert stale.text == "user=None new=True cart=None"
    assert stale.headers.getall("Set-Cookie") == []
    fresh = request(testapp, "/", cookie=f"{COOKIE}={new_id}")
    assert fresh.text == "user=alice new=False cart=['book']"


def test_login_on_a_new_session_stores_it_under_a_fresh_id(database):
    testapp = client(publisher(app_from(login_app), database))
    response = testapp.get("/login")
    session_id = issued_id(response)
    assert set(stored(database)) == {session_id}
    assert stored_user(database, session_id) == "alice"


def test_logout_deletes_cookie_and_kills_the_session(database):
    testapp = client(publisher(app_from(login_app), database))
    testapp.get("/write")
    session_id = issued_id(testapp.get("/login"))
    response = request(testapp, "/logout", cookie=f"{COOKIE}={session_id}")
    [cookie] = set_cookies(response)
    assert cookie["name"] == COOKIE and cookie["value"] == ""
    assert cookie["attrs"]["max-age"] == "0"
    assert "1970" in cookie["attrs"]["expires"]
    assert {"path", "httponly", "samesite"} <= set(cookie["attrs"])
    assert stored(database) == {}
    again = request(testapp, "/", cookie=f"{COOKIE}={session_id}")
    assert again.text == "user=None new=True cart=None"


def test_logout_then_write_hands_out_a_new_session(database):
    testapp = client(publisher(app_from(login_app), database))
    old_id = issued_id(testapp.get("/login"))

    def action(environ):
        environ["zodbsession.session"].logout()
        environ["zodbsession.session"]["flash"] = "bye"
        return "ok"

    testapp.publisher.app = validator(app_from(action))
    new_id = issued_id(request(testapp, cookie=f"{COOKIE}={old_id}"))
    assert new_id != old_id
    assert stored(database) == {new_id: {"flash": "bye"}}


UNKNOWN_ID = "A" * 43
BOGUS_COOKIES = {
    "malformed": f"{COOKIE}=not-a-session-id",
    "too-long-id": f"{COOKIE}={'A' * 44}",
    "oversized-100KB": f"{COOKIE}={'a' * 100_000}",
    "unknown-well-formed": f"{COOKIE}={UNKNOWN_ID}",
    "many-cookies": "; ".join(f"c{i}=v{i}" for i in range(1000)) + f"; {COOKIE}={UNKNOWN_ID}",
    "unicode": f"{COOKIE}=" + "sess\u00e9\u2603".encode().decode("latin-1"),
    "quoted-unknown": f'{COOKIE}="{UNKNOWN_ID}"',
    "quoted-garbage": f'{COOKIE}="\\"\\\\\\"";{COOKIE}="',
    "empty-value": f"{COOKIE}=",
    "no-equals": f"{COOKIE}",
    "only-separators": ";;; ;=;==",
    "other-cookie-only": "theme=dark",
}


@pytest.mark.parametrize("cookie", BOGUS_COOKIES.values(), ids=BOGUS_COOKIES.keys())
def test_bogus_cookie_writes_nothing(database, cookie):
    testapp = client(publisher(app_from(writer_app), database))
    existing = create_session(testapp, keep="1")
    before = database.storage.lastTransaction()
    testapp.publisher.app = validator(app_from(
        lambda env: f"{env['zodbsession.session'].get('keep')} {env['zodbsession.session'].is_new}"))
    response = request(testapp, cookie=cookie)
    assert response.status_int == 200
    assert response.text == "None True"
    assert response.headers.getall("Set-Cookie") == []
    assert database.storage.lastTransaction() == before
    assert set(stored(database)) == {existing}


@pytest.mark.parametrize("cookie", BOGUS_COOKIES.values(), ids=BOGUS_COOKIES.keys())
def test_bogus_cookie_then_write_hands_out_a_fresh_valid_id(database, cookie):
    testapp = client(publisher(app_from(writer_app), database))
    response = request(testapp, cookie=cookie, method="POST", params="a=1")
    session_id = issued_id(response)
    assert len(session_id) == 43 and session_id != UNKNOWN_ID
    assert stored(database) == {session_id: {"a": "1"}}


@pytest.mark.parametrize("timeout", ["idle", "lifetime"])
def test_expired_cookie_writes_nothing(database, timeout):
    clock = Clock()
    manager = SessionManager(idle_timeout=1800, max_lifetime=3600, clock=clock)
    testapp = client(publisher(app_from(writer_app), database, manager=manager))
    session_id = create_session(testapp, keep="1")

    def action(environ):
        session = environ["zodbsession.session"]
        return f"{session.get('keep')} {session.is_new}"

    testapp.publisher.app = validator(app_from(action))
    cookie = f"{COOKIE}={session_id}"
    if timeout == "idle":
        clock.now += 1801
    else:
        for _ in range(3):  # keep it in use: only the absolute lifetime ends it
            clock.now += 1000
            assert request(testapp, cookie=cookie).text == "1 False"
        clock.now += 601
    before = database.storage.lastTransaction()
    response = request(testapp, cookie=cookie)
    assert response.text == "None True"
    assert response.headers.getall("Set-Cookie") == []
    assert database.storage.lastTransaction() == before


# -- laziness ----------------------------------------------------------------------


class StorageLoads:
    """Counts the records one storage instance hands out (a measurement, not a mock)."""

    def __init__(self, storage: Any) -> None:
        self.count = 0
        for name in ("load", "loadBefore"):
            setattr(storage, name, self._counted(getattr(storage, name)))

    def _counted(self, original: Callable) -> Callable:
        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        return counted


def test_app_that_ignores_the_session_causes_no_lookup(database):
    testapp = client(publisher(app_from(writer_app), database))
    session_id = create_session(testapp, keep="1")
    loads = StorageLoads(database.storage)
    roots = []

    def ignoring(environ):
        roots.append(environ["zodbsession.connection"]._cache.get(b"\0" * 8))
        return "hello"

    testapp.publisher.app = validator(app_from(ignoring))
    database.cacheMinimize()
    response = request(testapp, cookie=f"{COOKIE}={session_id}")
    assert response.text == "hello"
    assert loads.count == 0
    assert roots[0] is None or roots[0]._p_status == "ghost"
    # the measurement does see a lookup when there is one
    testapp.publisher.app = validator(app_from(lambda env: env["zodbsession.session"]["keep"]))
    database.cacheMinimize()
    assert request(testapp, cookie=f"{COOKIE}={session_id}").text == "1"
    assert loads.count > 0


# -- the connection pool --------------------------------------------------------------


def test_pool_stays_bounded_over_a_thousand_mixed_requests(database):
    seen_open = []

    def action(environ):
        seen_open.append(len(open_connections(database)))
        session = environ["zodbsession.session"]
        kind = environ["PATH_INFO"]
        if kind == "/read":
            return str(session.get("n"))
        session["n"] = session.get("n", 0) + 1
        if kind == "/fail":
            raise RuntimeError("boom")
        if kind == "/conflict" and environ["zodbsession.attempt"] == 1:
            raise ConflictError("simulated")
        if kind == "/publish":
            raise PublishError("nope", status="409 Conflict")
        return "ok"

    def app(environ, start_response):
        status = "500 Oops" if environ["PATH_INFO"] == "/5xx" else "200 OK"
        body = action(environ).encode()
        start_response(status, TEXT)
        return [body]

    testapp = client(publisher(app, database))
    paths = ["/write", "/fail", "/conflict", "/5xx", "/read", "/publish"]
    statuses = {}
    for i in range(1002):
        path = paths[i % len(paths)]
        response = testapp.get(path, expect_errors=True)
        statuses.setdefault(path, set()).add(response.status_int)
        assert len(database.pool.all) <= database.pool.size
    assert statuses == {"/write": {200}, "/fail": {500}, "/conflict": {200}, "/5xx": {500},
                        "/read": {200}, "/publish": {409}}
    assert max(seen_open) == 1
    assert open_connections(database) == []
    assert all(info["opened"] is None for info in database.connectionDebugInfo())
    assert registry.has() is False
    # 167 rounds: /write, /conflict and /publish each add one
    assert list(stored(database).values()) == [{"n": 3 * 167}]


# -- streaming -----------------------------------------------------------------------


def streaming_app(db: DB, observed: list) -> Callable:
    def app(environ, start_response):
        session = environ["zodbsession.session"]
        session["first"] = "kept"
        environ["zodbsession.connection"].root()["app"] = 1
        start_response("200 OK", TEXT)

        def body():
            yield b"head;"
            observed.append((stored(db), app_value(db)))  # committed already?
            session["later"] = "discarded"
            environ["zodbsession.connection"].root()["app"] = 2
            yield b"middle;"
            yield b"tail"

        return body()

    return app


def test_streaming_commits_before_the_body_ends_and_discards_later_changes(database):
    observed = []
    testapp = client(publisher(streaming_app(database, observed), database, streaming=True))
    response = testapp.get("/")
    assert response.body == b"head;middle;tail"
    session_id = issued_id(response)
    assert observed == [({session_id: {"first": "kept"}}, 1)]
    assert stored(database) == {session_id: {"first": "kept"}}
    assert app_value(database) == 1
    assert open_connections(database) == []
    # the discarded change does not linger in the pooled connection's cache
    testapp.publisher.app = validator(app_from(
        lambda env: f"{sorted(env['zodbsession.session'])} {env['zodbsession.connection'].root()['app']}"))
    assert testapp.get("/").text == "['first'] 1"


def test_streaming_returns_the_connection_on_close(database):
    observed = []
    pub = SessionPublisher(streaming_app(database, observed), database, streaming=True)
    recorder = Recorder()
    body = validator(pub)(environ_for(), recorder)
    iterator = iter(body)
    assert next(iterator) == b"head;"
    assert recorder.status == "200 OK"
    assert len(open_connections(database)) == 1
    assert next(iterator) == b"middle;"
    assert len(open_connections(database)) == 1
    body.close()
    assert open_connections(database) == []
    assert registry.has() is False
    assert list(stored(database).values()) == [{"first": "kept"}]


def test_streaming_vetoed_response_is_sent_whole_and_aborted(database):
    def app(environ, start_response):
        environ["zodbsession.session"]["x"] = 1
        start_response("500 Internal Server Error", TEXT)
        return iter([b"part one;", b"part two"])

    testapp = client(publisher(app, database, streaming=True))
    response = testapp.get("/", status=500)
    assert response.body == b"part one;part two"
    assert response.headers.getall("Set-Cookie") == []
    assert stored(database) == {}
    assert open_connections(database) == []


class ClosingBody:
    """An iterable that is not a generator, and records whether it was closed."""

    def __init__(self, chunks: list[bytes], closed: list[int], attempt: int) -> None:
        self._chunks = chunks
        self._closed = closed
        self._attempt = attempt

    def __iter__(self):
        return iter(self._chunks)

    def close(self) -> None:
        self._closed.append(self._attempt)


def test_streaming_attempt_that_conflicts_closes_its_iterable(database):
    closed = []

    def app(environ, start_response):
        attempt = environ["zodbsession.attempt"]
        environ["zodbsession.session"]["x"] = attempt
        assert environ["zodbsession.connection"].root()["app"] in (0, "concurrent")
        if attempt == 1:
            tm = transaction.TransactionManager()
            conn = database.open(tm)
            conn.root()["app"] = "concurrent"
            tm.commit()
            conn.close()
        environ["zodbsession.connection"].root()["app"] = attempt
        start_response("200 OK", TEXT)
        return ClosingBody([b"a", b"b"], closed, attempt)

    # No inner validator: ClosingBody itself records the closes (and the
    # validator's __del__ assertion would only add noise when one is missed).
    pub = SessionPublisher(app, database, streaming=True, retry_backoff=0)
    response = client(pub).get("/")
    assert response.body == b"ab"
    assert closed == [1, 2]
    assert app_value(database) == 2


@pytest.mark.parametrize("failure", ["exception", "publish-error"])
def test_failing_streaming_attempt_closes_its_iterable(database, failure):
    closed = []

    class Failing(ClosingBody):
        def __iter__(self):
            yield b""
            if failure == "exception":
                raise RuntimeError("boom")
            raise PublishError("gone", status="410 Gone")

    def app(environ, start_response):
        start_response("200 OK", TEXT)
        return Failing([], closed, environ["zodbsession.attempt"])

    pub = SessionPublisher(app, database, streaming=True)
    recorder = Recorder()
    b"".join(pub(environ_for(), recorder))
    assert recorder.status.startswith("500" if failure == "exception" else "410")
    assert closed == [1]
    assert open_connections(database) == []


# -- joining an outer transaction ---------------------------------------------------


@pytest.fixture
def thread_transaction() -> Iterator[transaction.ThreadTransactionManager]:
    """The thread's default manager, left clean whatever the test did."""
    transaction.manager.abort()
    yield transaction.manager
    transaction.manager.abort()


def outer_tm(app: Callable, log: list) -> Callable:
    """A middleware owning the thread's transaction, like pyramid_tm or repoze.tm2:
    begin before the app, iterate the body, then commit (abort on error or 5xx)."""

    def middleware(environ, start_response):
        txn = transaction.manager.begin()
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"] = status
            return start_response(status, headers, exc_info)

        try:
            result = app(environ, capture)
            try:
                body = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            log.append(("before-outer-end", txn.status, transaction.manager.get() is txn))
            if captured["status"].startswith("5"):
                transaction.manager.abort()
            else:
                transaction.manager.commit()
        except Exception:
            transaction.manager.abort()
            raise
        return [body]

    return middleware


def test_joined_publisher_leaves_the_outer_transaction_alone(database, thread_transaction):
    log = []
    during = []

    def action(environ):
        environ["zodbsession.session"]["x"] = 1
        environ["zodbsession.connection"].root()["app"] = 8
        return "ok"

    pub = publisher(app_from(action), database, join_outer_transaction=True)

    def app(environ, start_response):
        body = pub(environ, start_response)
        during.append((stored(database), len(open_connections(database))))
        return body

    testapp = webtest.TestApp(validator(outer_tm(app, log)))
    response = testapp.get("/")
    session_id = issued_id(response)
    assert during == [({}, 1)]  # not committed, connection still lent
    assert log == [("before-outer-end", Status.ACTIVE, True)]
    assert stored(database) == {session_id: {"x": 1}}
    assert app_value(database) == 8
    assert open_connections(database) == []
    assert registry.has() is False


@pytest.mark.parametrize("failure", ["5xx", "exception"])
def test_joined_outer_abort_discards_the_session_change(database, thread_transaction, failure):
    def action(environ):
        environ["zodbsession.session"]["x"] = 1
        environ["zodbsession.connection"].root()["app"] = 9
        if failure == "exception":
            raise RuntimeError("boom")
        return "ok"

    pub = publisher(app_from(action, status="500 Oops"), database, join_outer_transaction=True)
    testapp = webtest.TestApp(outer_tm(pub, []))
    if failure == "exception":
        with pytest.raises(RuntimeError, match="boom"):  # the outer layer owns errors
            testapp.get("/")
    else:
        assert testapp.get("/", status=500).status_int == 500
    assert registry.has() is False
    assert stored(database) == {}
    assert app_value(database) == 0
    assert open_connections(database) == []


def test_joined_read_only_request_returns_the_connection_at_once(database,
                                                               thread_transaction):
    during = []
    pub = publisher(app_from(lambda env: env["zodbsession.session"].get("x")), database,
                    join_outer_transaction=True)

    def app(environ, start_response):
        body = pub(environ, start_response)
        during.append(len(open_connections(database)))
        return body

    webtest.TestApp(outer_tm(app, [])).get("/")
    assert during == [0]


def test_joined_failed_outer_commit_closes_the_connection_once(database, thread_transaction):
    """A failed commit runs the after-commit hooks, then the outer abort runs the
    after-abort ones: the connection must not be closed twice, for in between the
    pool may have lent it to someone else."""
    lent = {}
    joined = []

    def action(environ):
        joined.append(environ["zodbsession.connection"])
        environ["zodbsession.connection"].root()["app"] += 1
        return "ok"

    pub = publisher(app_from(action), database, join_outer_transaction=True)

    def middleware(environ, start_response):
        transaction.manager.begin()
        body = b"".join(pub(environ, start_response))
        with database.transaction() as conn:  # a concurrent commit: ours will conflict
            conn.root()["app"] += 10
        try:
            transaction.manager.commit()
        except ConflictError:
            # someone else borrows the joined connection from the pool meanwhile
            others = []
            while True:
                tm = transaction.TransactionManager()
                conn = database.open(tm)
                if conn is joined[0] or len(others) == 5:
                    break
                others.append(conn)
            lent.update(tm=tm, conn=conn)
            for other in others:
                other.close()
            transaction.manager.abort()
        return [body]

    webtest.TestApp(middleware).get("/")
    conn = lent["conn"]
    assert conn is joined[0]
    try:
        assert conn.opened is not None
        assert conn.transaction_manager is lent["tm"]
        conn.root()["app"] += 100
        lent["tm"].commit()
    finally:
        conn.close()
    assert app_value(database) == 110
    assert open_connections(database) == []


def test_joined_streaming_sends_the_whole_body(database, thread_transaction):
    def app(environ, start_response):
        environ["zodbsession.session"]["x"] = 1
        start_response("200 OK", TEXT)
        return iter([b"one;", b"two;", b"three"])

    pub = publisher(app, database, join_outer_transaction=True, streaming=True)
    response = webtest.TestApp(validator(outer_tm(pub, []))).get("/")
    assert response.body == b"one;two;three"
    assert stored(database) == {issued_id(response): {"x": 1}}
    assert open_connections(database) == []


# -- construction ---------------------------------------------------------------------


def test_retry_attempts_below_one_is_refused(database):
    with pytest.raises(ValueError, match="retry_attempts"):
        SessionPublisher(app_from(lambda env: ""), database, retry_attempts=0)


def test_explicit_manager_per_request_refuses_work_outside_the_transaction(database):
    """The per-request manager is explicit: after the publisher's commit there is
    no implicit transaction to write into by accident."""
    managers = []

    def action(environ):
        managers.append(environ["zodbsession.connection"].transaction_manager)
        return "ok"

    request(client(publisher(app_from(action), database)))
    with pytest.raises(NoTransaction):
        managers[0].get()


# -- the read path: nothing to commit, managers reused ----------------------------------


def test_request_that_changed_nothing_is_aborted_not_committed(database):
    """No vote, no witness: a read costs an abort. What it registered for an abort runs."""
    seen = []

    def action(environ):
        txn = environ["zodbsession.connection"].transaction_manager.get()
        txn.addAfterAbortHook(lambda: seen.append("aborted"))
        seen.append(environ["zodbsession.session"].get("x"))
        return "ok"

    testapp = client(publisher(app_from(action), database))
    before = database.storage.lastTransaction()
    response = request(testapp)
    assert response.status_int == 200
    assert seen == [None, "aborted"]
    assert database.storage.lastTransaction() == before


@pytest.mark.parametrize("what", ["after-commit-hook", "before-commit-hook"])
def test_request_with_a_commit_hook_still_commits(database, what):
    """A hook is a promise of work at commit time: it must run, even if nothing was written."""
    seen = []

    def action(environ):
        txn = environ["zodbsession.connection"].transaction_manager.get()
        if what == "after-commit-hook":
            txn.addAfterCommitHook(lambda status: seen.append(status))
        else:
            txn.addBeforeCommitHook(lambda: seen.append("before"))
        return "ok"

    assert request(client(publisher(app_from(action), database))).status_int == 200
    assert seen == ([True] if what == "after-commit-hook" else ["before"])


def test_doomed_request_that_changed_nothing_still_fails_its_commit(database):
    def action(environ):
        environ["zodbsession.connection"].transaction_manager.doom()
        return "ok"

    assert request(client(publisher(app_from(action), database))).status_int == 500


def test_transaction_managers_are_reused_clean_across_requests(database):
    managers = []

    def action(environ):
        tm = environ["zodbsession.connection"].transaction_manager
        managers.append(tm)
        assert tm.explicit
        environ["zodbsession.session"]["n"] = len(managers)
        return "ok"

    testapp = client(publisher(app_from(action), database))
    for _ in range(3):
        assert request(testapp, method="POST").status_int == 200
    assert managers[0] is managers[1] is managers[2]
    assert testapp.publisher._idle_managers == [managers[0]]
    with pytest.raises(NoTransaction):
        managers[0].get()
    assert not managers[0].registeredSynchs()


def test_a_streaming_response_keeps_its_manager_until_closed(database):
    """Another request meanwhile gets a manager of its own; the stream's comes back at close."""
    managers = []

    def app(environ, start_response):
        managers.append(environ["zodbsession.connection"].transaction_manager)
        start_response("200 OK", TEXT)
        return iter([b"a", b"b"])

    pub = SessionPublisher(app, database, streaming=True)
    first = pub(environ_for(), Recorder())
    second = pub(environ_for(), Recorder())
    assert managers[0] is not managers[1]
    assert pub._idle_managers == []
    assert b"".join(second) == b"ab"
    second.close()
    assert pub._idle_managers == [managers[1]]
    assert b"".join(first) == b"ab"
    first.close()
    assert set(map(id, pub._idle_managers)) == {id(managers[0]), id(managers[1])}
    pub(environ_for(), Recorder()).close()
    assert managers[2] in managers[:2]


def test_a_manager_left_with_a_transaction_is_not_reused(database):
    """An application that keeps a synchronizer on its manager gets it dropped, not pooled."""
    class Synch:
        def beforeCompletion(self, txn): ...  # noqa: N802

        def afterCompletion(self, txn): ...  # noqa: N802

        def newTransaction(self, txn): ...  # noqa: N802

    synch = Synch()

    def action(environ):
        environ["zodbsession.connection"].transaction_manager.registerSynch(synch)
        return "ok"

    pub = publisher(app_from(action), database)
    assert request(client(pub)).status_int == 200
    assert pub._idle_managers == []
