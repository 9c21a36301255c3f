"""``zodbsession serve``: a WSGI app inside the publisher, on waitress, with a janitor.

Start-up opens the database once, wraps the application in a
``SessionPublisher`` configured from the settings, starts the expiry janitor
and serves on waitress's thread pool. SIGTERM or Ctrl-C stops accepting new
connections, lets the requests in flight finish and send their answers, then
closes the database cleanly.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import waitress
from ZODB import DB

from zodbsession.config import Settings
from zodbsession.cookies import CookiePolicy
from zodbsession.errors import ConfigError
from zodbsession.janitor import Janitor
from zodbsession.manager import SessionManager
from zodbsession.publisher import SessionPublisher, WSGIApp

log = logging.getLogger(__name__)

#: What ``serve`` runs when neither ``--app`` nor ``server.app`` names an app.
DEMO_APP = "zodbsession.demo.app:app"

#: How long a shutdown waits for requests in flight before giving up on them.
DRAIN_TIMEOUT = 30.0


def load_app(spec: str) -> WSGIApp:
    """Import ``module:callable`` (dots after the colon walk attributes)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError("server.app", f"must look like module:callable (got {spec!r})")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("server.app", f"cannot import {module_name!r}: {exc}") from None
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ConfigError("server.app", f"{module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ConfigError("server.app", f"{spec!r} is not callable")
    return target


def cookie_policy(settings: Settings) -> CookiePolicy:
    """The cookie attributes the [cookie] section asks for."""
    cookie = settings.cookie
    return CookiePolicy(
        name=cookie.name,
        path=cookie.path,
        domain=cookie.domain or None,
        secure=cookie.secure,
        httponly=cookie.httponly,
        samesite=cookie.samesite,
        max_age=int(settings.sessions.max_lifetime) if cookie.persistent else None,
    )


def make_publisher(app: WSGIApp, db: DB, settings: Settings,
                   manager: SessionManager | None = None) -> SessionPublisher:
    """A ``SessionPublisher`` around *app* configured from *settings*."""
    options = settings.publisher
    return SessionPublisher(
        app,
        db,
        manager=manager if manager is not None else settings.session_manager(),
        cookie=cookie_policy(settings),
        retry_attempts=options.retry_attempts,
        retry_backoff=options.retry_backoff,
        max_replay_bytes=options.max_replay_bytes,
        streaming=options.streaming,
        serialize_same_session=options.serialize_same_session,
    )


def serve(settings: Settings, *, app_spec: str | None = None, config_name: str = "defaults",
          on_ready: Callable[[Any], None] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain and close the database."""
    app = load_app(app_spec or settings.server.app or DEMO_APP)
    db = settings.open_db()
    try:
        manager = settings.session_manager()
        publisher = make_publisher(app, db, settings, manager)
        server = waitress.create_server(
            publisher,
            host=settings.server.host,
            port=settings.server.port,
            threads=settings.server.threads,
            ident="zodbsession",
            clear_untrusted_proxy_headers=True,
        )
        janitor = Janitor(db, manager, interval=settings.janitor.interval,
                          batch_size=settings.janitor.batch_size).start()
        log.info(
            "serving %s on http://%s:%s/ with %d threads (storage %s%s, config %s)",
            app_spec or settings.server.app or DEMO_APP, settings.server.host,
            server.effective_port, settings.server.threads, settings.storage.uri,
            f", sessions {settings.storage.sessions_uri}" if settings.storage.sessions_uri else "",
            config_name,
        )
        if on_ready is not None:
            on_ready(server)
        try:
            _run_until_stopped(server)
        finally:
            janitor.stop()
    finally:
        db.close()
    log.info("stopped; database closed")


def _run_until_stopped(server: Any) -> None:
    stopping = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            log.info("%s received: finishing requests in flight", signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping.is_set():
            server.asyncore.loop(timeout=0.5, map=server._map, use_poll=True, count=1)
        _drain(server)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _drain(server: Any) -> None:
    """Stop accepting, let in-flight requests finish and flush, then close."""
    server.accepting = False
    server.del_channel()
    server.socket.close()
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while _busy(server) and time.monotonic() < deadline:
        server.asyncore.loop(timeout=0.05, map=server._map, use_poll=True, count=1)
    if _busy(server):
        log.warning("requests still running after %.0f s; stopping anyway", DRAIN_TIMEOUT)
    for channel in list(server._map.values()):
        channel.close()
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)


def _busy(server: Any) -> bool:
    dispatcher = server.task_dispatcher
    if dispatcher.queue or dispatcher.active_count:
        return True
    return any(
        getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0)
        for channel in server._map.values()
        if channel is not server
    )
