"""Test clients for an application behind zodbsession: WSGI or ASGI, in process.

A client is one browser: a cookie jar and requests that go straight into the
wrapped application (no sockets). ``WSGIClient`` drives a ``SessionPublisher``,
``ASGIClient`` a ``zodbsession.web.asgi.SessionMiddleware`` on an event loop of
its own. Both reach the server-side session of their cookie:

- ``client.session``: a copy of its data (``{}`` when there is none);
- ``with client.session_transaction() as session:`` change it in a block that
  commits at its end (a new session's cookie is then set in the jar);
- ``client.login(user_id)`` / ``client.logout()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json as jsonlib
import wsgiref.util
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode, urlsplit

from ZODB import DB

from zodbsession.core.errors import ConfigError
from zodbsession.core.manager import SessionManager
from zodbsession.core.request_session import RequestSession
from zodbsession.testing.scopes import as_request
from zodbsession.web.cookies import CookiePolicy
from zodbsession.web.interface import is_asgi


class Response:
    """One answer: ``status`` (an int), ``status_line``, ``headers`` (a list of pairs), ``body``."""

    def __init__(self, status_line: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status_line = status_line
        self.status = int(status_line.split(" ", 1)[0])
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return jsonlib.loads(self.body)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called *name* (case-insensitive), or *default*."""
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), default)

    def header_list(self, name: str) -> list[str]:
        """Every header called *name* (``Set-Cookie`` comes several times)."""
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def __repr__(self) -> str:
        return f"<Response {self.status_line}>"


class SessionClient:
    """What both clients share: the cookie jar, requests, and the server-side session helpers.

    Threading: one client per test; requests run one after another.
    """

    def __init__(self, app: Any, db: DB, manager: SessionManager, cookie: CookiePolicy) -> None:
        self.app = app
        self.db = db
        self.manager = manager
        self.cookie = cookie
        self.cookies: dict[str, str] = {}  # {name -> value}: one host, one path

    def close(self) -> None:
        """Release what the client holds (the ASGI client's event loop); also at ``with``'s end."""

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------

    def request(self, method: str, path: str, *, body: bytes | str = b"", json: Any = None,
                data: dict[str, str] | None = None, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """Send one request; ``json`` or ``data`` (a form) set the body and its Content-Type."""
        headers = list(headers)
        if json is not None:
            body = jsonlib.dumps(json)
            headers.append(("Content-Type", "application/json"))
        elif data is not None:
            body = urlencode(data)
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
        payload = body.encode("utf-8") if isinstance(body, str) else body
        if self.cookies:
            headers.append(("Cookie", "; ".join(f"{name}={value}" for name, value in self.cookies.items())))
        response = self._send(method.upper(), path, headers, payload)
        for value in response.header_list("Set-Cookie"):
            self._store_cookie(value)
        return response

    def get(self, path: str, **options: Any) -> Response:
        return self.request("GET", path, **options)

    def post(self, path: str, **options: Any) -> Response:
        return self.request("POST", path, **options)

    def put(self, path: str, **options: Any) -> Response:
        return self.request("PUT", path, **options)

    def delete(self, path: str, **options: Any) -> Response:
        return self.request("DELETE", path, **options)

    def _send(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        raise NotImplementedError

    def _store_cookie(self, header: str) -> None:
        pair, *attributes = header.split(";")
        name, _, value = pair.strip().partition("=")
        removed = any(attribute.strip().lower() in ("max-age=0", "max-age=-1") for attribute in attributes)
        if removed or not value:
            self.cookies.pop(name, None)
        else:
            self.cookies[name] = value

    # -- the server-side session -----------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The session id the client's cookie holds, or None."""
        return self.cookies.get(self.cookie.name)

    @session_id.setter
    def session_id(self, value: str | None) -> None:
        if value is None:
            self.cookies.pop(self.cookie.name, None)
        else:
            self.cookies[self.cookie.name] = value

    @property
    def session(self) -> dict[str, Any]:
        """A copy of the data of the live session the cookie names; ``{}`` when there is none."""
        if self.session_id is None:
            return {}
        with self.session_transaction() as session:
            return dict(session.items())

    @property
    def user_id(self) -> str | None:
        """Who the client's session is logged in as, or None."""
        if self.session_id is None:
            return None
        with self.session_transaction() as session:
            return session.user_id

    @contextlib.contextmanager
    def session_transaction(self) -> Iterator[RequestSession]:
        """Change the client's server-side session in a block that commits at its end.

        The block gets the session as a request would (a ``RequestSession``:
        the same mapping and verbs). A session started here is stored by the
        first write, and the client's cookie set to it; a ``logout()`` or
        ``invalidate()`` deletes the cookie. An exception aborts the block.
        """
        with as_request(self.db, self.manager, session_id=self.session_id) as request:
            yield request.session
        self.session_id = request.session_id

    def login(self, user_id: str) -> None:
        """Log the client in as *user_id*: its session (made if needed) is bound and rotated."""
        with self.session_transaction() as session:
            session.login(user_id)

    def logout(self) -> None:
        """End the client's session on the server and forget its cookie."""
        with self.session_transaction() as session:
            session.logout()
        self.session_id = None


class WSGIClient(SessionClient):
    """A client for a WSGI application wrapped by ``SessionPublisher`` (see ``make_client``)."""

    def _send(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        url = urlsplit(path)
        environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": url.path or "/",
                                   "QUERY_STRING": url.query, "SERVER_NAME": "testserver",
                                   "SERVER_PORT": "80", "REMOTE_ADDR": "127.0.0.1"}
        wsgiref.util.setup_testing_defaults(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        for name, value in headers:
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = f"{environ[key]}; {value}" if key == "HTTP_COOKIE" and key in environ else value
        answer: dict[str, Any] = {}
        written: list[bytes] = []

        def start_response(status: str, response_headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            answer["status"], answer["headers"] = status, list(response_headers)
            return written.append

        result = self.app(environ, start_response)
        try:
            written.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return Response(answer["status"], answer["headers"], b"".join(written))


class ASGIClient(SessionClient):
    """A client for an ASGI application wrapped by ``zodbsession.web.asgi.SessionMiddleware``.

    Requests run on one event loop the client keeps (so the middleware's
    locks stay on one loop); ``close()`` ends it. Lifespan events are not sent.
    """

    def __init__(self, app: Any, db: DB, manager: SessionManager, cookie: CookiePolicy) -> None:
        super().__init__(app, db, manager, cookie)
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        """Close the client's event loop."""
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def _send(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        return self.loop.run_until_complete(self._call(method, path, headers, body))

    async def _call(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        url = urlsplit(path)
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": url.path or "/", "raw_path": (url.path or "/").encode(),
            "query_string": url.query.encode(), "root_path": "",
            "headers": [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())]
            + [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
            "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        }
        sent_body = False
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        answer: dict[str, Any] = {"chunks": []}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = [(k.decode("latin-1"), v.decode("latin-1"))
                                     for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                answer["chunks"].append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        await self.app(scope, receive, send)
        done.set()
        status = answer["status"]
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        return Response(f"{status} {phrase}", answer["headers"], b"".join(answer["chunks"]))


#: Why the client cannot drive a Django project, and what does.
DJANGO_CLIENT = (
    "a Django application keeps Django's own session (SESSION_ENGINE = 'zodbsession.django', "
    "cookie SESSION_COOKIE_NAME), which this client's session, session_id and login() would not "
    "see: use Django's test client (django.test.Client) with "
    "zodbsession.django.use_database(zodbsession_db), see docs/django.md, 'Tests'")


def _refuse_framework_sessions(app: Any) -> None:
    """Raise ``ConfigError`` for an application whose framework keeps a session this client cannot reach."""
    if type(app).__module__.startswith("django.core.handlers."):
        raise ConfigError("zodbsession_app", DJANGO_CLIENT)


def make_client(app: Any, db: DB | None = None, *, manager: SessionManager | None = None,
                cookie: CookiePolicy | None = None, **options: Any) -> SessionClient:
    """A client for *app*: wrapped here by the publisher (WSGI) or the middleware (ASGI).

    An *app* already wrapped (a ``SessionPublisher`` or ``SessionMiddleware``)
    is used as it is, with its own database, manager and cookie policy; so is
    a Pyramid app with ``zodbsession.pyramid`` (pyramid_tm runs its
    transaction). A Django project's WSGI or ASGI handler is refused with
    ``ConfigError`` naming Django's test client: its session is Django's.
    Otherwise *db* is required, and *options* go to the wrapper.
    """
    _refuse_framework_sessions(app)
    pyramid = getattr(getattr(app, "registry", None), "zodbsession", None)
    if pyramid is not None and getattr(pyramid, "db", None) is not None:
        # A Pyramid app with config.include("zodbsession.pyramid"): pyramid_tm runs
        # its transaction, on its own database; wrapping it would make a second.
        return WSGIClient(app, pyramid.db, pyramid.manager, pyramid.cookie)
    if hasattr(app, "core") and hasattr(app, "cookie") and hasattr(app, "db"):
        wrapped = app
    else:
        if db is None:
            raise TypeError("make_client needs the database to wrap the application with: "
                            "make_client(app, db)")
        manager = manager if manager is not None else SessionManager()
        cookie = cookie if cookie is not None else CookiePolicy()
        if is_asgi(app):
            from zodbsession.web.asgi import SessionMiddleware

            wrapped = SessionMiddleware(app, db, manager=manager, cookie=cookie, **options)
        else:
            from zodbsession.web.wsgi.publisher import SessionPublisher

            wrapped = SessionPublisher(app, db, manager=manager, cookie=cookie, **options)
    client_class = ASGIClient if is_asgi(wrapped) else WSGIClient
    return client_class(wrapped, wrapped.db, wrapped.manager, wrapped.cookie)
