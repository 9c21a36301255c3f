"""The demo application: a session counter, a login and a rollback you can watch.

A plain WSGI callable, ``app``, meant to run inside ``SessionPublisher``
(``--app zodbsession.demo.app:app``). It shows, in a browser or from a script:

- session data committed with the request: a counter kept in the session;
- Post/Redirect/Get with a flash message, kept because ``Redirect`` commits;
- login rotating the session id, logout ending the session and its cookie;
- the application's own data (a ``BTrees.Length`` under the database root key
  ``INCREMENTS_KEY``) committing and aborting together with the session:
  ``POST /fail`` changes both and then raises, and neither change survives.

Routes: ``GET /``; ``POST /counter``, ``/fail``, ``/login`` (form field
``user``), ``/logout``; ``GET /api/session``; ``POST /api/counter``,
``/api/fail``, ``/api/login`` (JSON ``{"user": ...}`` or a form ``user=...``), ``/api/logout``.
Reads write nothing: ``GET /api/session`` never creates a session nor sets a
cookie, and ``GET /`` writes only to remove a flash message it shows.
Cross-site form posts are left to the cookie's ``SameSite=Lax``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from BTrees.Length import Length

from zodbsession.core.errors import PublishError, Redirect
from zodbsession.core.request_session import RequestSession
from zodbsession.demo.page import render_page

if TYPE_CHECKING:
    from zodbsession.web.wsgi.replay import InputStream

#: The database root key of the application's own data: every increment, by anyone.
INCREMENTS_KEY = "app.increments"
#: Largest request body read, form or JSON; a longer one gets 413.
MAX_BODY_BYTES = 64 * 1024
#: Longest user name accepted at login.
MAX_USER_LENGTH = 64

HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"

Environ = dict[str, Any]
#: A handler's answer: status, content type and body.
Answer = tuple[str, str, bytes]
Handler = Callable[[Environ], Answer]


class DemoFailure(RuntimeError):
    """Raised on purpose by ``/fail`` and ``/api/fail`` after changing data."""


# -- reading the request ---------------------------------------------------


def _session(environ: Environ) -> RequestSession:
    """The request's session, which only ``SessionPublisher`` provides."""
    try:
        session: RequestSession = environ["zodbsession.session"]
    except KeyError:
        raise RuntimeError("the demo app must run inside zodbsession's SessionPublisher") from None
    return session


def _read_body(environ: Environ) -> bytes:
    """The request body, at most ``MAX_BODY_BYTES``; 400 or 413 otherwise."""
    stream: InputStream = environ["wsgi.input"]
    raw = environ.get("CONTENT_LENGTH") or ""
    if raw:
        length = int(raw) if raw.isascii() and raw.isdigit() else -1
        if length < 0:
            raise PublishError(f"bad Content-Length {raw!r}: send a byte count")
        if length > MAX_BODY_BYTES:
            raise _too_large()
        return stream.read(length)
    if environ.get("wsgi.input_terminated"):
        # Chunked: read until the server ends the stream, but never past the limit.
        body = stream.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
        return body
    return b""


def _too_large() -> PublishError:
    return PublishError(f"the body is over the limit of {MAX_BODY_BYTES} bytes",
                        status="413 Content Too Large")


def _form(environ: Environ) -> dict[str, list[str]]:
    """The fields of an ``application/x-www-form-urlencoded`` body."""
    try:
        return parse_qs(_read_body(environ).decode("utf-8"), keep_blank_values=True,
                        max_num_fields=20)
    except ValueError as exc:  # bad UTF-8 or too many fields
        raise PublishError(f"unreadable form body: {exc}") from None


def _login_fields(environ: Environ) -> dict[str, Any]:
    """The login body: a JSON object, or form fields (``user=alice``) when it is not one.

    The body decides, not the Content-Type: ``curl -d '{"user": "alice"}'``
    and urllib label a JSON body as a form.
    """
    body = _read_body(environ)
    if body.lstrip()[:1] in (b"{", b"["):
        return _json_object(body)
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except ValueError as exc:  # bad UTF-8 or too many fields
        raise PublishError(f"unreadable form body: {exc}") from None
    return {key: values[0] for key, values in form.items()}


def _json_object(body: bytes) -> dict[str, Any]:
    """The JSON object in *body*; 400 for anything else."""
    try:
        value = json.loads(body.decode("utf-8"))
    except ValueError as exc:  # bad UTF-8 or bad JSON
        raise PublishError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        raise PublishError("the body is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise PublishError('the body must be a JSON object such as {"user": "alice"}')
    return value


def _valid_user(value: object) -> str:
    """*value* as a user name (surrounding blanks removed); 400 unless 1-64 printable chars."""
    name = value.strip() if isinstance(value, str) else ""
    if not 1 <= len(name) <= MAX_USER_LENGTH or not name.isprintable():
        raise PublishError(f"the user name must be 1 to {MAX_USER_LENGTH} printable "
                           f"characters, not {value!r}")
    return name


# -- the data the demo changes ---------------------------------------------


def _increments(environ: Environ) -> int:
    """The increments by everyone, read without creating anything."""
    length = environ["zodbsession.connection"].root().get(INCREMENTS_KEY)
    return length() if length is not None else 0


def _increment(environ: Environ) -> int:
    """Add one to the session's counter and to the increments by everyone.

    Both are changes in the request's one transaction: they commit or abort
    together. The ``Length`` merges concurrent increments instead of conflicting.
    """
    session = _session(environ)
    count: int = session.get("count", 0) + 1
    session["count"] = count
    root = environ["zodbsession.connection"].root()
    length = root.get(INCREMENTS_KEY)
    if length is None:
        length = root[INCREMENTS_KEY] = Length()
    length.change(1)
    return count


def _session_view(session: RequestSession) -> dict[str, Any]:
    """What ``/api/session`` shows; ``id_prefix`` is None while nothing is stored."""
    new = session.is_new
    return {
        "id_prefix": None if new else session.id[:8],
        "user": session.user_id,
        "data": {key: session[key] for key in session},
        "new": new,
    }


def _json(value: Any, status: str = "200 OK") -> Answer:
    return status, JSON, json.dumps(value, default=repr).encode("utf-8")


# -- the HTML pages ------------------------------------------------------------


def show_page(environ: Environ) -> Answer:
    """``GET /``: the session, the total, the buttons; shows a flash message once."""
    session = _session(environ)
    flash = session.pop("flash", None)  # removing it is this page's only write
    html = render_page(
        count=session.get("count", 0),
        user=session.user_id,
        session_prefix=None if session.is_new else session.id[:8],
        flash=flash,
        increments=_increments(environ),
    )
    return "200 OK", HTML, html.encode("utf-8")


def _page_as_before(environ: Environ) -> Callable[[str], str]:
    """The page as it is before this request changes anything, awaiting its error message.

    What ``POST /fail`` answers: the publisher aborts the request's changes
    (the answer is a 5xx), so the page must show what stays, not what the
    failed request had written.
    """
    session = _session(environ)
    shown = {"count": session.get("count", 0), "user": session.user_id,
             "session_prefix": None if session.is_new else session.id[:8],
             "increments": _increments(environ)}
    return lambda error: render_page(**shown, flash=None, error=error)


def press_increment(environ: Environ) -> Answer:
    """``POST /counter``: increment, leave a flash message, redirect to ``/``."""
    count = _increment(environ)
    _session(environ)["flash"] = f"Incremented: the counter is now {count}."
    raise Redirect("/")


def press_fail(environ: Environ) -> Answer:
    """``POST /fail``: increment, fail, and answer 500 with the demo page and what happened.

    The answer being a 5xx, the publisher aborts both increments (its commit
    veto), as it would for the exception itself; the page then shows the
    counters as they stay, with the failure's message, instead of the
    publisher's bare "internal server error" for an exception.
    """
    page = _page_as_before(environ)
    try:
        _fail(environ)
    except DemoFailure as failure:
        message = (f"The request failed ({failure}), so the publisher rolled its transaction back: "
                   "neither the session's counter nor the increments by everyone changed.")
        return "500 Internal Server Error", HTML, page(message).encode("utf-8")
    raise AssertionError("unreachable: _fail always raises")


def _fail(environ: Environ) -> None:
    count = _increment(environ)
    raise DemoFailure(f"failing on purpose after incrementing the counter to {count}")


def press_login(environ: Environ) -> Answer:
    """``POST /login``: log the form's ``user`` in (a new session id), redirect to ``/``."""
    user = _valid_user(_form(environ).get("user", [""])[0])
    session = _session(environ)
    session.login(user)
    session["flash"] = f"Logged in as {user}: the session has a new id."
    raise Redirect("/")


def press_logout(environ: Environ) -> Answer:
    """``POST /logout``: end the session (its cookie is deleted), redirect to ``/``."""
    _session(environ).logout()
    raise Redirect("/")


# -- the JSON API --------------------------------------------------------------


def api_session(environ: Environ) -> Answer:
    """``GET /api/session``: the session as JSON, read only."""
    return _json(_session_view(_session(environ)))


def api_counter(environ: Environ) -> Answer:
    """``POST /api/counter``: increment; answers ``{"count": n}``."""
    return _json({"count": _increment(environ)})


def api_fail(environ: Environ) -> Answer:
    """``POST /api/fail``: increment, then raise; nothing survives (the publisher's 500)."""
    _fail(environ)
    raise AssertionError("unreachable: _fail always raises")


def api_login(environ: Environ) -> Answer:
    """``POST /api/login`` with ``{"user": ...}`` or a form ``user=...``: log in; answers the session."""
    user = _valid_user(_login_fields(environ).get("user"))
    session = _session(environ)
    session.login(user)
    return _json(_session_view(session))


def api_logout(environ: Environ) -> Answer:
    """``POST /api/logout``: end the session; answers the (new, empty) session."""
    session = _session(environ)
    session.logout()
    return _json(_session_view(session))


ROUTES: dict[str, dict[str, Handler]] = {  # {path -> {method -> handler}}
    "/": {"GET": show_page},
    "/counter": {"POST": press_increment},
    "/fail": {"POST": press_fail},
    "/login": {"POST": press_login},
    "/logout": {"POST": press_logout},
    "/api/session": {"GET": api_session},
    "/api/counter": {"POST": api_counter},
    "/api/fail": {"POST": api_fail},
    "/api/login": {"POST": api_login},
    "/api/logout": {"POST": api_logout},
}


def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI entry point: route by path and method; 404 and 405 otherwise."""
    path = environ.get("PATH_INFO") or "/"
    methods = ROUTES.get(path)
    if methods is None:
        raise PublishError(f"nothing here: {path}", status="404 Not Found")
    method = environ.get("REQUEST_METHOD", "GET")
    handler = methods.get(method)
    if handler is None:
        allow = ", ".join(sorted(methods))
        raise PublishError(f"{method} is not allowed on {path}; use {allow}",
                           status="405 Method Not Allowed", headers=[("Allow", allow)])
    status, content_type, body = handler(environ)
    start_response(status, [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        # The page is this session's alone: no cache may keep or share it.
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ])
    return [body]

