"""``AdminApp``: the admin listener's WSGI application.

Meant for an address of its own (loopback by default), apart from the
application's listener: Prometheus metrics, a dashboard with charts, a search
of sessions showing their bookkeeping only, and revocation. Who may use it is
``access.AdminAccess``'s business; without the token every URL answers 401
before anything else is looked at, the database included. Errors are logged
and answered with a short page, never a traceback.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

from ZODB import DB

from zodbsession.admin import page
from zodbsession.admin.access import AdminAccess
from zodbsession.admin.sampler import Sampler, rates, recent_rate
from zodbsession.core.manager import SessionManager
from zodbsession.core.retry import RetryPolicy
from zodbsession.core.session import ids_equal
from zodbsession.ops import maintenance
from zodbsession.ops.maintenance import SessionInfo
from zodbsession.ops.metrics import (
    CONTENT_TYPE_LATEST,
    STORAGE_READ_TIMEOUT,
    BoundedReader,
    Metrics,
    count_sessions,
)

log = logging.getLogger(__name__)

#: Largest form body read; the admin's forms send a few hundred bytes.
MAX_FORM_BYTES = 16 * 1024

#: The admin's reads, retried by the one policy but briefly: a page view must not hang.
READ_RETRY = RetryPolicy(3, backoff=0.01, max_backoff=0.1)

_ID_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_CHALLENGE = ("WWW-Authenticate", 'Bearer realm="zodbsession admin"')

StartResponse = Callable[..., Any]


def find_by_prefix(db: DB, manager: SessionManager, prefix: str, limit: int) -> list[SessionInfo]:
    """``maintenance.sessions_by_prefix`` with the admin's brief retries."""
    return maintenance.sessions_by_prefix(db, manager, prefix, limit, retry=READ_RETRY)


def last_packs(db: DB) -> dict[str, float | None]:
    """``maintenance.last_packs`` with the admin's brief retries."""
    return maintenance.last_packs(db, retry=READ_RETRY)


class BadRequest(Exception):
    """A request the admin answers 400: a parameter no page of its own would send."""


@dataclass
class _Response:
    status: str
    body: str | bytes = ""
    content_type: str = "text/html; charset=utf-8"
    headers: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class _Request:
    environ: dict[str, Any]
    credential: str
    nonce: str  # this response's Content-Security-Policy nonce
    args: dict[str, list[str]] = field(default_factory=dict)  # the query, or a POST's form

    def arg(self, name: str) -> str:
        return self.args.get(name, [""])[0]


class AdminApp:
    """The admin listener's WSGI application.

    Routes: ``GET /`` (dashboard), ``GET /metrics`` (Prometheus text),
    ``GET /sessions?prefix=`` or ``?user=`` (search), ``GET /session?id=``
    (one session's bookkeeping; ``&data=1`` shows its data), ``POST /revoke``
    (``id``), ``POST /revoke-user`` (``user``), ``POST /login`` (``token``),
    ``POST /logout``. An empty *token* raises ``ConfigError`` naming
    ``admin.token``. The dashboard's reads from the storage wait at most
    *storage_timeout* seconds: a frozen storage leaves the page answering,
    saying so, with this server's own counters.

    Threading: one instance serves every thread of a server. ``start`` and
    ``stop`` run the chart sampler's thread (without it, page views sample).
    """

    def __init__(self, db: DB, manager: SessionManager, metrics: Metrics, *, token: str,
                 sampler: Sampler | None = None, search_limit: int = 50,
                 login_lifetime: float = 12 * 3600.0,
                 storage_timeout: float = STORAGE_READ_TIMEOUT) -> None:
        self.access = AdminAccess(token, lifetime=login_lifetime)
        self.db = db
        self.manager = manager
        # The dashboard's own reads, bounded like the scrape's: a frozen storage costs one thread each.
        self.storage_timeout = storage_timeout
        self._read_packs = BoundedReader(lambda: last_packs(db), storage_timeout)
        self._read_count = BoundedReader(lambda: count_sessions(db, manager), storage_timeout)
        self.metrics = metrics
        self.sampler = sampler if sampler is not None else Sampler(metrics)
        self.search_limit = search_limit
        self._routes: dict[tuple[str, str], Callable[[_Request], _Response]] = {
            ("GET", "/"): self._dashboard, ("GET", "/metrics"): self._metrics,
            ("GET", "/sessions"): self._sessions, ("GET", "/session"): self._session,
            ("POST", "/revoke"): self._revoke, ("POST", "/revoke-user"): self._revoke_user,
            ("POST", "/logout"): self._logout,
        }

    def _quiet(self, read: BoundedReader) -> Any:
        """*read()* from the storage, waiting at most ``storage_timeout``; None when it fails."""
        try:
            return read()
        except TimeoutError:
            log.warning("admin: the storage did not answer within %g s", self.storage_timeout)
        except Exception:
            log.warning("admin: reading from the storage failed", exc_info=True)
        return None

    def start(self) -> AdminApp:
        """Start sampling for the charts."""
        self.sampler.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self.sampler.stop()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        nonce = secrets.token_urlsafe(16)
        try:
            response = self._handle(environ, nonce)
        except BadRequest as exc:
            response = _Response("400 Bad Request", page.error_page("Bad request", str(exc), nonce=nonce))
        except Exception:
            log.exception("admin: %s %s failed", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            response = _Response("500 Internal Server Error", page.error_page(
                "Internal error", "Something failed; the server's log has the details.", nonce=nonce))
        body = response.body.encode() if isinstance(response.body, str) else response.body
        # Referrer-Policy same-origin, not no-referrer: URLs carrying session ids stay
        # here, and with no-referrer Chromium sends "Origin: null", which the CSRF check refuses.
        start_response(response.status, [
            ("Content-Type", response.content_type), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"), ("Referrer-Policy", "same-origin"),
            ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", f"default-src 'none'; style-src 'nonce-{nonce}'; "
             "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
            *response.headers])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def _handle(self, environ: dict[str, Any], nonce: str) -> _Response:
        method = environ.get("REQUEST_METHOD", "GET")
        method = "GET" if method == "HEAD" else method
        path = environ.get("PATH_INFO") or "/"
        client = str(environ.get("REMOTE_ADDR", "?"))
        guessing = (method, path) == ("POST", "/login") or self.access.sends_bearer(environ)
        if guessing and (wait := self.access.limiter.retry_after(client)):
            return _Response("429 Too Many Requests",
                             f"429 Too Many Requests: too many wrong tokens; retry in {wait} s\n",
                             "text/plain; charset=utf-8", [("Retry-After", str(wait))])
        if (method, path) == ("POST", "/login"):
            return self._login(environ, nonce)
        credential = self.access.credential(environ)
        if credential is None:
            if guessing:
                self.access.limiter.failed(client)
            return self._unauthorized(environ, method, path, nonce)
        args = _read_form(environ) if method == "POST" else parse_qs(environ.get("QUERY_STRING", ""))
        request = _Request(environ, credential, nonce, args)
        handler = self._routes.get((method, path))
        if handler is None:
            allowed = [m for (m, p) in self._routes if p == path]
            if allowed:
                return _Response("405 Method Not Allowed", page.error_page(
                    "Method not allowed", f"{path} accepts {', '.join(allowed)}.", nonce=nonce),
                    headers=[("Allow", ", ".join(allowed))])
            return _Response("404 Not Found",
                             page.error_page("Not found", f"No page at {path}.", nonce=nonce))
        if method == "POST" and not self.access.post_allowed(environ, credential, request.arg("csrf")):
            log.warning("admin: refused a POST to %s without a valid CSRF token or from another origin", path)
            return _Response("403 Forbidden", page.error_page(
                "Forbidden", "This form is stale or came from another site: reload the page and try again.",
                nonce=nonce))
        return handler(request)

    def _unauthorized(self, environ: dict[str, Any], method: str, path: str, nonce: str) -> _Response:
        if path == "/metrics":
            return _Response("401 Unauthorized",
                             "401 Unauthorized: send Authorization: Bearer <admin token>\n",
                             "text/plain; charset=utf-8", [_CHALLENGE])
        query = environ.get("QUERY_STRING", "")
        next_url = path + (f"?{query}" if query else "") if method == "GET" else "/"
        return _Response("401 Unauthorized", page.login_page(next_url=next_url, failed=False, nonce=nonce),
                         headers=[_CHALLENGE])

    def _login(self, environ: dict[str, Any], nonce: str) -> _Response:
        form = _read_form(environ)
        next_url = _local(form.get("next", ["/"])[0])
        if not self.access.is_token(form.get("token", [""])[0]):
            self.access.limiter.failed(str(environ.get("REMOTE_ADDR", "?")))
            return _Response("401 Unauthorized", page.login_page(next_url=next_url, failed=True, nonce=nonce),
                             headers=[_CHALLENGE])
        cookie = self.access.login_cookie(https=environ.get("wsgi.url_scheme") == "https")
        return _Response("303 See Other", headers=[("Location", next_url), ("Set-Cookie", cookie)])

    # -- pages --------------------------------------------------------------------------

    def _dashboard(self, request: _Request) -> _Response:
        self.sampler.take_if_due()
        samples = self.sampler.samples()
        snapshot = self.metrics.snapshot()
        if snapshot["storage_reachable"] is None:  # metrics made without readers: count here
            snapshot["live_sessions"] = self._quiet(self._read_count)
        packs = self._quiet(self._read_packs)
        message = _message(request)
        if packs is None or snapshot["storage_reachable"] is False:
            message = (f"The storage did not answer within {self.storage_timeout:g} s: the figures read "
                       "from it are missing. The counters below are this server's own. " + message)
        charts = [
            page.Chart("Sessions", [("stored", "#0969da", [(s.at, s.live_sessions) for s in samples
                                                           if s.live_sessions is not None])]),
            page.Chart("Requests per second", [("requests", "#1a7f37", rates(samples, "requests"))]),
            # Conflicts are a subset of retries: drawn last, so they show on top.
            page.Chart("Conflicts and retries per second", [
                ("retries", "#bf8700", rates(samples, "retries")),
                ("conflicts", "#cf222e", rates(samples, "conflicts"))]),
        ]
        view = page.Dashboard(
            snapshot=snapshot, charts=charts, last_pack=packs or {}, csrf=self._csrf(request),
            rates={name: recent_rate(samples, name) for name in ("requests", "conflicts", "retries")},
            message=message.strip())
        return _Response("200 OK", page.dashboard_page(view, nonce=request.nonce))

    def _metrics(self, request: _Request) -> _Response:
        return _Response("200 OK", self.metrics.render(), CONTENT_TYPE_LATEST)

    def _sessions(self, request: _Request) -> _Response:
        prefix, user = request.arg("prefix").strip(), request.arg("user").strip()
        if user:
            infos = list(maintenance.list_sessions(self.db, self.manager, user=user,
                                                   limit=self.search_limit, include_expired=True))
        elif set(prefix) <= _ID_CHARACTERS and len(prefix) <= 43:
            infos = find_by_prefix(self.db, self.manager, prefix, self.search_limit)
        else:
            infos = []  # no id has such characters
        return _Response("200 OK", page.sessions_page(
            infos, prefix=prefix, user=user, limit=self.search_limit, csrf=self._csrf(request),
            nonce=request.nonce, now=self.manager.clock(), message=_message(request)))

    def _session(self, request: _Request) -> _Response:
        session_id = request.arg("id")
        found = find_by_prefix(self.db, self.manager, session_id, 1) if len(session_id) == 43 else []
        if not found or not ids_equal(found[0].id, session_id):
            return _Response("404 Not Found", page.error_page(
                "No such session", "No stored session has that id: revoked, expired and swept, or "
                "never there.", nonce=request.nonce))
        detail = None
        if request.arg("data") == "1":
            detail = maintenance.show_session(self.db, self.manager, session_id)
            log.info("admin: showed the data of session %s...", session_id[:8])
        return _Response("200 OK", page.session_page(found[0], detail, csrf=self._csrf(request),
                                                     nonce=request.nonce, now=self.manager.clock()))

    def _revoke(self, request: _Request) -> _Response:
        session_id = request.arg("id")
        revoked = int(maintenance.revoke(self.db, self.manager, session_id))
        log.info("admin: revoked %d session (%s...)", revoked, session_id[:8])
        return _redirect(request.arg("back") or "/", revoked)

    def _revoke_user(self, request: _Request) -> _Response:
        user = request.arg("user")
        revoked = maintenance.revoke_user(self.db, self.manager, user) if user else 0
        log.info("admin: revoked %d session(s) of user %r", revoked, user)
        return _redirect("/sessions?" + urlencode({"user": user}), revoked)

    def _logout(self, request: _Request) -> _Response:
        return _Response("303 See Other", headers=[("Location", "/"),
                                                   ("Set-Cookie", self.access.logout_cookie())])

    def _csrf(self, request: _Request) -> str:
        return self.access.csrf_token(request.credential)


def _read_form(environ: dict[str, Any]) -> dict[str, list[str]]:
    """The urlencoded body of a POST; empty when missing or over ``MAX_FORM_BYTES``."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return {}
    if not 0 < length <= MAX_FORM_BYTES:
        return {}
    body = environ["wsgi.input"].read(length)
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def _local(url: str) -> str:
    """*url* if it is a path on this host, else ``/``: no open redirect."""
    if not url.startswith("/") or url.startswith("//") or "\\" in url or any(c < " " for c in url):
        return "/"
    return url


def _redirect(back: str, revoked: int) -> _Response:
    back = _local(back)
    return _Response("303 See Other", headers=[
        ("Location", f"{back}{'&' if '?' in back else '?'}revoked={revoked}")])


def _message(request: _Request) -> str:
    """The note a redirect after a revocation asks for; ``BadRequest`` for a forged count."""
    revoked = request.arg("revoked")
    if not revoked:
        return ""
    if not (revoked.isascii() and revoked.isdigit() and len(revoked) <= 9):
        raise BadRequest("revoked= must be a count of sessions")
    return f"Revoked {int(revoked)} session(s)."




