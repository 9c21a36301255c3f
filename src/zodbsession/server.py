"""``zodbsession serve``: a WSGI app inside the publisher, on waitress, with a janitor.

Start-up opens the database once, wraps the application in a
``SessionPublisher`` configured from the settings, subscribes the metrics to
the manager's observers, starts the expiry janitor and serves on waitress's
thread pool. When ``admin.token`` is set, the admin listener (``AdminApp``:
metrics, dashboard, revocation) serves on an address of its own, in the same
event loop with a small thread pool of its own, so that a busy application
never locks the operator out. SIGTERM or Ctrl-C stops accepting new
connections on both, lets the requests in flight finish and send their
answers, then closes the database cleanly.

With ``server.workers`` > 1, ``serve`` hands over to ``workers.Supervisor``,
which forks that many processes; each runs ``serve_app`` on the socket the
parent bound, and only the first runs the janitor and the admin listener.
Their metrics meet in prometheus_client's multiprocess directory, which must
be chosen before prometheus_client is first imported: this module and the
CLI import ``zodbsession.metrics`` only once it has been.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import waitress
from ZEO.Exceptions import ClientDisconnected
from ZODB import DB
from ZODB.POSException import ConflictError

from zodbsession.config import Settings
from zodbsession.cookies import CookiePolicy
from zodbsession.db import StorageUnavailable, redact_uri, zeo_wait_timeout
from zodbsession.errors import ConfigError
from zodbsession.janitor import Janitor
from zodbsession.manager import SessionManager
from zodbsession.publisher import SessionPublisher, WSGIApp

if TYPE_CHECKING:  # both import prometheus_client: at run time, only once its mode is chosen
    from zodbsession.admin import AdminApp
    from zodbsession.metrics import Metrics

log = logging.getLogger(__name__)

#: What ``serve`` runs when neither ``--app`` nor ``server.app`` names an app.
DEMO_APP = "zodbsession.demo.app:app"

#: How long a shutdown waits for requests in flight before giving up on them.
DRAIN_TIMEOUT = 30.0

#: prometheus_client's switch to multiprocess mode (``zodbsession.metrics.MULTIPROC_ENV``,
#: spelt out here because importing that module would import prometheus_client too early).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Where ``serve --workers N`` keeps its workers' metrics unless ``PROMETHEUS_MULTIPROC_DIR`` says.
DEFAULT_METRICS_DIR = "var/metrics"

#: Threads of the admin listener: page views and scrapes, apart from the application's.
ADMIN_THREADS = 2


def load_app(spec: str, key: str = "server.app") -> WSGIApp:
    """Import ``module:callable`` (dots after the colon walk attributes); *key* names it in errors."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(key, f"must look like module:callable (got {spec!r})")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(key, f"cannot import {module_name!r}: {exc}") from None
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ConfigError(key, f"{module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ConfigError(key, f"{spec!r} is not callable")
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
    """Serve until SIGTERM or Ctrl-C, then drain and close the database.

    With ``server.workers`` > 1 this process becomes the supervisor of that
    many worker processes (see ``zodbsession.workers``); *on_ready* is then
    not called. The application is imported here, before any fork.
    """
    with metrics_directory(settings):  # before the app, which may import prometheus_client
        spec = app_spec or settings.server.app or DEMO_APP
        app = load_app(spec)
        if settings.server.workers > 1:
            from zodbsession.workers import Supervisor

            Supervisor(settings, app, app_name=spec, config_name=config_name).run()
            return
        serve_app(settings, app, app_name=spec, config_name=config_name, on_ready=on_ready)


@contextlib.contextmanager
def metrics_directory(settings: Settings) -> Iterator[str | None]:
    """Claim prometheus_client's multiprocess directory for this server, if it has one.

    With several workers it defaults to ``var/metrics``; with one process it
    is used only when ``PROMETHEUS_MULTIPROC_DIR`` is set (so that ``zodbsession
    stats`` can read the counters). The directory is this server's for its
    lifetime: emptied at start, and locked against a second server.
    Yields its absolute path, or None.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path and settings.server.workers > 1:
        path = DEFAULT_METRICS_DIR
    if not path:
        yield None
        return
    os.environ[MULTIPROC_ENV] = path = os.path.abspath(path)
    from zodbsession.metrics import claim_multiprocess_dir  # now that multiprocess mode is set

    with claim_multiprocess_dir(path):
        yield path


def serve_app(settings: Settings, app: WSGIApp, *, app_name: str = "", config_name: str = "defaults",
              sockets: Sequence[socket.socket] = (), janitor: bool = True, admin: bool = True,
              admin_sockets: Sequence[socket.socket] = (), label: str = "",
              parent_pid: int | None = None, on_ready: Callable[[Any], None] | None = None) -> None:
    """Serve *app* in this process until SIGTERM or Ctrl-C (or *parent_pid* exits).

    Opens the database (waiting at most a zeo:// URI's ``wait_timeout``, and
    saying so), the metrics, the publisher, waitress on ``server.host``/``port``
    or on the already-bound *sockets*, with *admin* and a token the admin
    listener on ``admin.host``/``port`` or *admin_sockets*, and, with
    *janitor*, the expiry sweep. *label* prefixes the log lines ("worker 2: ").
    Raises ``StorageUnavailable`` when the storage server does not answer in
    time and ``ConfigError`` when an address cannot be bound.
    """
    from zodbsession.metrics import Metrics  # after metrics_directory() chose the mode

    with contextlib.ExitStack() as stack:  # unwound last in, first out
        db = open_storage(settings, label)
        stack.callback(db.close)
        manager = settings.session_manager()
        if settings.server.on_start:
            # The application's hook: subscribe an audit log, warm a cache...
            load_app(settings.server.on_start, "server.on_start")(db, manager)
        metrics = Metrics.for_database(db, manager).start()
        stack.callback(metrics.stop)
        stack.callback(manager.observers.subscribe(metrics))
        publisher = _make_first_publisher(app, db, settings, manager)
        socket_map: dict[int, Any] = {}  # one event loop for both listeners
        listeners = []
        if admin and settings.admin.enabled:
            admin_app = _make_admin(db, manager, metrics, settings)
            stack.callback(admin_app.stop)
            listeners.append(_create_admin_server(admin_app, settings, admin_sockets, socket_map))
        server = _create_server(publisher, settings, sockets, socket_map)
        janitor_thread = Janitor(db, manager, interval=settings.janitor.interval if janitor else 0,
                                 batch_size=settings.janitor.batch_size).start()
        stack.callback(janitor_thread.stop)
        log.info(
            "%sserving %s on http://%s:%s/ with %d threads (storage %s%s, config %s%s)",
            label, app_name, settings.server.host, server.effective_port, settings.server.threads,
            redact_uri(settings.storage.uri),
            f", sessions {redact_uri(settings.storage.sessions_uri)}"
            if settings.storage.sessions_uri else "",
            config_name, "" if janitor or not settings.janitor.interval else ", janitor elsewhere",
        )
        if admin:
            _log_admin(settings, listeners, label)
        if on_ready is not None:
            on_ready(server)
        _run_until_stopped(server, parent_pid, listeners)
    log.info("%sstopped; database closed", label)


def _make_admin(db: DB, manager: SessionManager, metrics: Metrics, settings: Settings) -> AdminApp:
    """The admin application on *metrics*, its chart sampler started."""
    from zodbsession.admin import AdminApp

    return AdminApp(db, manager, metrics, token=settings.admin.token).start()


def _create_admin_server(admin_app: AdminApp, settings: Settings, sockets: Sequence[socket.socket],
                         socket_map: dict[int, Any]) -> Any:
    """The admin listener, registered in *socket_map*, with a task dispatcher of its own."""
    options: dict[str, Any] = {"threads": ADMIN_THREADS, "ident": "zodbsession-admin",
                               "clear_untrusted_proxy_headers": True}
    if sockets:
        return waitress.create_server(admin_app, map=socket_map, sockets=list(sockets), **options)
    try:
        return waitress.create_server(admin_app, map=socket_map, host=settings.admin.host,
                                      port=settings.admin.port, **options)
    except OSError as exc:
        raise ConfigError("admin.port", f"cannot listen on {settings.admin.host}:"
                          f"{settings.admin.port}: {exc.strerror or exc}") from None


def _log_admin(settings: Settings, listeners: Sequence[Any], label: str) -> None:
    """Say where the admin listener is, or why there is none; never the token."""
    if not listeners:
        log.info("%sadmin listener off: admin.token is not set (set ZODBSESSION_ADMIN_TOKEN to "
                 "serve metrics and the admin page on %s:%s)", label, settings.admin.host,
                 settings.admin.port)
        return
    host = settings.admin.host
    log.info("%sadmin listener on http://%s:%s/ (metrics on /metrics; every request needs the "
             "admin token)", label, host, listeners[0].effective_port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("%sthe admin listener on %s is reachable from other machines, over plain "
                    "HTTP: the token crosses the network in clear unless a TLS proxy is in front",
                    label, host)


def open_storage(settings: Settings, label: str = "") -> DB:
    """``settings.open_db()``, logging how long a ZEO server is waited for, at most."""
    waits = [t for t in map(zeo_wait_timeout, (settings.storage.uri, settings.storage.sessions_uri))
             if t is not None]
    if waits:
        log.info("%sconnecting to the ZEO server (%s): waiting at most %d s", label,
                 redact_uri(settings.storage.uri), max(waits))
    try:
        db = settings.open_db()
    except ClientDisconnected:  # lost again between connecting and the first load
        raise _went_away(settings) from None
    return db


def _make_first_publisher(app: WSGIApp, db: DB, settings: Settings,
                          manager: SessionManager) -> SessionPublisher:
    """``make_publisher``, which creates the session container: retried when workers race."""
    for attempt in range(1, 6):
        try:
            return make_publisher(app, db, settings, manager)
        except ClientDisconnected:
            raise _went_away(settings) from None
        except ConflictError:
            # Several processes starting on a fresh shared database all
            # create the container; one wins, and the others then find it.
            if attempt == 5:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _went_away(settings: Settings) -> StorageUnavailable:
    return StorageUnavailable(f"{redact_uri(settings.storage.uri)}: the ZEO server went away while the "
                              "server was starting; start again when it is back")


def _create_server(publisher: SessionPublisher, settings: Settings,
                   sockets: Sequence[socket.socket], socket_map: dict[int, Any] | None = None) -> Any:
    options: dict[str, Any] = {"threads": settings.server.threads, "ident": "zodbsession",
                               "clear_untrusted_proxy_headers": True, "map": socket_map}
    if sockets:
        return waitress.create_server(publisher, sockets=list(sockets), **options)
    try:
        return waitress.create_server(publisher, host=settings.server.host,
                                      port=settings.server.port, **options)
    except OSError as exc:
        raise ConfigError("server.port", f"cannot listen on {settings.server.host}:"
                          f"{settings.server.port}: {exc.strerror or exc}") from None


def _run_until_stopped(server: Any, parent_pid: int | None = None,
                       others: Sequence[Any] = ()) -> None:
    """Run the event loop of *server* (and *others* in its map) until a signal, then drain."""
    stopping = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            log.info("%s received: finishing requests in flight", signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping.is_set():
            server.asyncore.loop(timeout=0.5, map=server._map, use_poll=True, count=1)
            if parent_pid is not None and os.getppid() != parent_pid:
                # A worker whose supervisor was killed would otherwise serve on, unmanaged.
                log.warning("the supervisor (pid %d) is gone: finishing requests in flight",
                            parent_pid)
                stopping.set()
        _drain(server, others)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _drain(server: Any, others: Sequence[Any] = ()) -> None:
    """Stop accepting on every listener, let in-flight requests finish and flush, then close."""
    listeners = (server, *others)
    for listener in listeners:
        listener.accepting = False
        listener.del_channel()
        listener.socket.close()
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while _busy(listeners) and time.monotonic() < deadline:
        server.asyncore.loop(timeout=0.05, map=server._map, use_poll=True, count=1)
    if _busy(listeners):
        log.warning("requests still running after %.0f s; stopping anyway", DRAIN_TIMEOUT)
    for channel in list(server._map.values()):
        channel.close()
    for listener in listeners:
        listener.task_dispatcher.shutdown(cancel_pending=True, timeout=5)


def _busy(listeners: Sequence[Any]) -> bool:
    """Whether a task runs or waits, or a channel of the shared map has work left."""
    if any(lsn.task_dispatcher.queue or lsn.task_dispatcher.active_count for lsn in listeners):
        return True
    return any(
        getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0)
        for channel in listeners[0]._map.values()
        if channel not in listeners
    )
