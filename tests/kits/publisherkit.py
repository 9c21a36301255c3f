"""Helpers shared by the publisher's tests (tests/web/test_publisher*.py): apps, clients, what was stored.

Every request goes through ``wsgiref.validate.validator`` twice: around the
publisher (as a server sees it) and around the application (as the publisher
calls it). What was committed is always checked from a fresh connection with
a transaction manager of its own, never through the request's connection.
"""

from __future__ import annotations

import io
import wsgiref.util
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.validate import validator

import transaction
import webtest
from ZODB import DB
from ZODB.MappingStorage import MappingStorage

from zodbsession import SessionPublisher
from zodbsession.core.store import ROOT_KEY

COOKIE = "zodbsession"
TEXT = [("Content-Type", "text/plain; charset=utf-8")]


def make_database() -> Iterator[DB]:
    """A ZODB database on a MappingStorage, with ``root()["app"]`` = 0 (the ``database`` fixture)."""
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
