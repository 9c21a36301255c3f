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
CLI import ``zodbsession.ops.metrics`` only once it has been.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ZEO.Exceptions import ClientDisconnected
from ZODB import DB
from ZODB.POSException import ConflictError

from zodbsession.config import Settings, cookie_policy
from zodbsession.core.db import file_paths, redact_uri, zeo_wait_timeout
from zodbsession.core.errors import ConfigError, StorageUnavailable
from zodbsession.core.manager import SessionManager
from zodbsession.ops.janitor import Janitor
from zodbsession.ops.lease import Lease
from zodbsession.serve.apps import LoadedApp, adopt_app_settings, load_app, resolve
from zodbsession.serve.control import ControlListener, server_socket
from zodbsession.serve.uvicorn_server import UvicornListener
from zodbsession.serve.waitress_server import create_server
from zodbsession.serve.workers import DRAIN_TIMEOUT, MULTIPROC_ENV, bind_socket
from zodbsession.web.wsgi.publisher import SessionPublisher, WSGIApp

if TYPE_CHECKING:  # both import prometheus_client: at run time, only once its mode is chosen
    from zodbsession.admin import AdminApp
    from zodbsession.ops.metrics import Metrics

log = logging.getLogger(__name__)

#: What ``serve`` runs when neither ``--app`` nor ``server.app`` names an app.
DEMO_APP = "zodbsession.demo.app:app"

#: Where ``serve --workers N`` keeps its workers' metrics unless ``PROMETHEUS_MULTIPROC_DIR`` says.
DEFAULT_METRICS_DIR = "var/metrics"

#: Threads of the admin listener: page views and scrapes, apart from the application's.
ADMIN_THREADS = 2
#: Connections the admin listener holds at once, and how long an idle one is kept (seconds).
ADMIN_CONNECTION_LIMIT = 50
ADMIN_CHANNEL_TIMEOUT = 30


def front_door_keywords(settings: Settings, manager: SessionManager | None = None) -> dict[str, Any]:
    """What both front doors take from the settings: the manager, the cookie and the options."""
    return {
        "manager": manager if manager is not None else settings.session_manager(),
        "cookie": cookie_policy(settings),
        "options": settings.front_door_options(),
    }


def make_publisher(app: WSGIApp, db: DB, settings: Settings,
                   manager: SessionManager | None = None) -> SessionPublisher:
    """A ``SessionPublisher`` around *app* configured from *settings*."""
    return SessionPublisher(app, db, **front_door_keywords(settings, manager))


def front_door(loaded: LoadedApp, db: DB, settings: Settings, manager: SessionManager) -> Any:
    """The application inside the session publisher (WSGI) or the session middleware (ASGI)."""
    if loaded.interface == "wsgi":
        return make_publisher(loaded.app, db, settings, manager)
    return make_middleware(loaded.app, db, settings, manager)


def make_middleware(app: Any, db: DB, settings: Settings, manager: SessionManager | None = None) -> Any:
    """``zodbsession.web.asgi.SessionMiddleware`` around *app*, with the publisher's settings."""
    from zodbsession.web.asgi import SessionMiddleware

    return SessionMiddleware(app, db, **front_door_keywords(settings, manager))


def serve(settings: Settings, *, app_spec: str | None = None, config_name: str = "defaults",
          on_ready: Callable[[Any], None] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain and close the database.

    The application is a WSGI or an ASGI one (``apps.load_app`` tells,
    ``server.asgi`` forces ASGI); it is imported here, before any fork. With
    ``server.workers`` > 1 this process becomes the supervisor of that many
    worker processes (see ``zodbsession.serve.workers``); *on_ready* is then not
    called.
    """
    with metrics_directory(settings):  # before the app, which may import prometheus_client
        spec = app_spec or settings.server.app or DEMO_APP
        loaded = load_app(spec, asgi=settings.server.asgi)
        settings = adopt_app_settings(settings, loaded.app)
        if settings.server.workers > 1:
            from zodbsession.serve.workers import Supervisor

            Supervisor(settings, loaded, config_name=config_name, worker_main=serve_app).run()
            return
        serve_app(settings, loaded, config_name=config_name, on_ready=on_ready)


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
    from zodbsession.ops.metrics import claim_multiprocess_dir  # now that multiprocess mode is set

    with claim_multiprocess_dir(path):
        yield path


def serve_app(settings: Settings, loaded: LoadedApp, *, config_name: str = "defaults",
              sockets: Sequence[socket.socket] = (), janitor: bool = True, admin: bool = True,
              admin_sockets: Sequence[socket.socket] = (), label: str = "",
              parent_pid: int | None = None, on_ready: Callable[[Any], None] | None = None) -> None:
    """Serve *loaded* in this process until SIGTERM or Ctrl-C (or *parent_pid* exits).

    Opens the database (waiting at most a zeo:// URI's ``wait_timeout``, and
    saying so), the metrics, the front door (``front_door``), the server
    (waitress for WSGI, uvicorn for ASGI) on ``server.host``/``port`` or on
    the already-bound *sockets*, with *admin* and a token the admin listener
    on ``admin.host``/``port`` or *admin_sockets* (its own waitress, socket
    map and thread, whatever the application's port suffers), and, with
    *janitor*, the expiry sweep. *label* prefixes the log lines ("worker 2: ").
    Raises ``StorageUnavailable`` when the storage server does not answer in
    time and ``ConfigError`` when an address cannot be bound.
    """
    from zodbsession.ops.metrics import Metrics  # after metrics_directory() chose the mode

    with contextlib.ExitStack() as stack:  # unwound last in, first out
        signals = stack.enter_context(_StopSignals())
        db, created = open_storage(settings, label)
        stack.callback(db.close)
        manager = settings.session_manager()
        if settings.server.on_start:
            # The application's hook: subscribe an audit log, warm a cache...
            resolve(settings.server.on_start, "server.on_start")(db, manager)
        metrics = Metrics.for_database(db, manager, timeout=settings.admin.storage_timeout).start()
        stack.callback(metrics.stop)
        stack.callback(manager.observers.subscribe(metrics))
        wrapped = _make_first_front_door(loaded, db, settings, manager)
        admin_listener = None
        if admin and settings.admin.enabled:
            admin_app = _make_admin(db, manager, metrics, settings)
            stack.callback(admin_app.stop)
            admin_listener = AdminListener(_create_admin_server(admin_app, settings, admin_sockets))
        if loaded.interface == "asgi":
            server: Any = UvicornListener(wrapped, settings, sockets or [bind_socket(
                settings.server.host, settings.server.port)], DRAIN_TIMEOUT)
        else:
            server = _create_server(wrapped, settings, sockets)
        control_socket = server_socket(settings.storage)
        if control_socket is not None:
            # The maintenance commands reach the files this process holds through it.
            stack.callback(ControlListener(db, manager, control_socket).start().stop)
        interval = settings.janitor.interval if janitor else 0
        # Servers sharing the database sweep one at a time: whoever holds the lease.
        lease = Lease(db, manager, period=settings.janitor.lease or 3 * interval) if interval else None
        janitor_thread = Janitor(db, manager, interval=interval, batch_size=settings.janitor.batch_size,
                                 lease=lease).start()
        stack.callback(janitor_thread.stop)
        if admin_listener is not None:
            stack.callback(admin_listener.stop)  # after the application's drain
            admin_listener.start()
        engine = "uvicorn" if loaded.interface == "asgi" else "waitress"
        if engine == "uvicorn" and not _start_uvicorn(server, loaded, signals):
            return  # stopped while starting
        for path in created:
            log.info("%screated a new, empty database at %s", label, path)
        _log_serving(loaded, settings, server.effective_port, label, config_name, janitor, engine)
        _log_admin(settings, admin_listener, label, admin)
        if on_ready is not None:
            on_ready(server)
        if engine == "uvicorn":
            try:
                signals.wait(parent_pid, server.alive)
            finally:
                server.stop()
        else:
            _run_until_stopped(server, signals, parent_pid)
    log.info("%sstopped; database closed", label)


def _log_serving(loaded: LoadedApp, settings: Settings, port: int, label: str, config_name: str,
                 janitor: bool, engine: str) -> None:
    log.info(
        "%sserving %s (%s) on http://%s:%s/ with %s (storage %s%s, config %s%s)",
        label, loaded.spec, loaded.interface.upper(), settings.server.host, port,
        f"waitress, {settings.server.threads} threads" if engine == "waitress" else "uvicorn",
        redact_uri(settings.storage.uri),
        f", sessions {redact_uri(settings.storage.sessions_uri)}"
        if settings.storage.sessions_uri else "",
        config_name, "" if janitor or not settings.janitor.interval else ", janitor elsewhere",
    )


def _start_uvicorn(server: UvicornListener, loaded: LoadedApp, signals: _StopSignals) -> bool:
    """Start uvicorn and wait until it accepts; False when told to stop meanwhile.

    Raises ``ConfigError`` when the application's lifespan startup fails.
    """
    server.start()
    while not server.ready() and server.alive() and not signals.stopping.is_set():
        time.sleep(0.02)
    if server.ready():
        return True
    server.stop()
    if signals.stopping.is_set():
        return False
    raise ConfigError("server.app", f"the ASGI application {loaded.spec!r} failed to start "
                      f"({server.error or 'its lifespan startup failed'})")


def _make_admin(db: DB, manager: SessionManager, metrics: Metrics, settings: Settings) -> AdminApp:
    """The admin application on *metrics*, its chart sampler started."""
    from zodbsession.admin import AdminApp

    return AdminApp(db, manager, metrics, token=settings.admin.token,
                    storage_timeout=settings.admin.storage_timeout).start()


def _create_admin_server(admin_app: AdminApp, settings: Settings, sockets: Sequence[socket.socket]) -> Any:
    """The admin listener's waitress server, on a socket map of its own."""
    options: dict[str, Any] = {"threads": ADMIN_THREADS, "ident": "zodbsession-admin",
                               "clear_untrusted_proxy_headers": True, "map": {},
                               "connection_limit": ADMIN_CONNECTION_LIMIT,
                               "channel_timeout": ADMIN_CHANNEL_TIMEOUT}
    if sockets:
        return create_server(admin_app, sockets=list(sockets), **options)
    return _bound_server(admin_app, "admin", settings.admin.host, settings.admin.port, options)


def _bound_server(app: Any, key: str, host: str, port: int, options: dict[str, Any]) -> Any:
    """``waitress.create_server`` on *host*:*port*; errors name the settings *key*.host or .port."""
    try:
        socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except OSError as exc:  # waitress would say "Invalid host/port specified." only
        raise ConfigError(f"{key}.host", f"cannot resolve {host!r}: {exc.strerror or exc}; use an "
                          "IP address or a name this machine resolves") from None
    try:
        return create_server(app, host=host, port=port, **options)
    except OSError as exc:
        raise ConfigError(f"{key}.port", f"cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None


def _log_admin(settings: Settings, listener: AdminListener | None, label: str, admin: bool) -> None:
    """Say where the admin listener is, or why there is none; never the token."""
    if not admin:
        return
    if listener is None:
        log.info("%sadmin listener off: admin.token is not set (set ZODBSESSION_ADMIN_TOKEN to "
                 "serve metrics and the admin page on %s:%s)", label, settings.admin.host,
                 settings.admin.port)
        return
    host = settings.admin.host
    log.info("%sadmin listener on http://%s:%s/ (metrics on /metrics; every request needs the "
             "admin token)", label, host, listener.server.effective_port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("%sthe admin listener on %s is reachable from other machines, over plain "
                    "HTTP: the token crosses the network in clear unless a TLS proxy is in front",
                    label, host)


def open_storage(settings: Settings, label: str = "") -> tuple[DB, list[str]]:
    """``settings.open_db()``, logging how long a ZEO server is waited for, at most.

    Returns the database and the paths of the new, empty file databases it
    created, which ``serve_app`` logs once it serves (so that a mistyped path
    is noticed at start-up rather than as missing sessions, and a start-up
    that fails stays one line).
    """
    waits = [t for t in map(zeo_wait_timeout, (settings.storage.uri, settings.storage.sessions_uri))
             if t is not None]
    if waits:
        log.info("%sconnecting to the ZEO server (%s): waiting at most %d s", label,
                 redact_uri(settings.storage.uri), max(waits))
    missing = [path for path in file_paths(settings.storage.uri, settings.storage.sessions_uri)
               if not os.path.exists(path)]
    try:
        db = settings.open_db()
    except ClientDisconnected:  # lost again between connecting and the first load
        raise _went_away(settings) from None
    return db, [os.path.abspath(path) for path in missing]


def _make_first_front_door(loaded: LoadedApp, db: DB, settings: Settings, manager: SessionManager) -> Any:
    """``front_door``, which creates the session container: retried when workers race."""
    for attempt in range(1, 6):
        try:
            return front_door(loaded, db, settings, manager)
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


def waitress_options(settings: Settings) -> dict[str, Any]:
    """waitress's adjustments for the application's listener, from [server]."""
    server = settings.server
    options: dict[str, Any] = {
        "threads": server.threads, "ident": "zodbsession", "clear_untrusted_proxy_headers": True,
        "connection_limit": server.connection_limit, "channel_timeout": server.channel_timeout,
        "max_request_header_size": server.max_request_header_size,
        "max_request_body_size": settings.publisher.max_request_body or 1 << 62,
    }
    if server.trusted_proxy:
        options.update(trusted_proxy=server.trusted_proxy,
                       trusted_proxy_headers=server.trusted_proxy_headers)
    return options


def _create_server(app: Any, settings: Settings, sockets: Sequence[socket.socket]) -> Any:
    # waitress warns "Task queue depth is N" for every request that finds all
    # threads busy: with more keep-alive connections than threads that is most
    # requests, thousands of lines a second, and their formatting took about a
    # sixth of the throughput of writes under load (docs/benchmarks.md). A queue
    # is the normal state of a busy server; its cost shows in the request latency.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    options = {**waitress_options(settings), "map": {}}
    if sockets:
        return create_server(app, sockets=list(sockets), **options)
    return _bound_server(app, "server", settings.server.host, settings.server.port, options)


class AdminListener:
    """The admin listener's waitress server, run by a thread on a socket map of its own.

    Apart from the application's listener in everything (socket map, event
    loop thread, connection limit, task threads), so that connections held
    open on the application's port cannot lock the operator out.

    Threading: ``start`` and ``stop`` are called from the serving thread.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="zodbsession-admin-loop", daemon=True)

    def start(self) -> AdminListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, let the admin requests in flight answer, close."""
        self._stopping.set()
        self._thread.join()

    def _loop(self) -> None:
        server = self.server
        while not self._stopping.is_set():
            server.asyncore.loop(timeout=0.5, map=server._map, use_poll=True, count=1)
        _drain(server, timeout=5.0)


class _StopSignals:
    """SIGTERM and Ctrl-C recorded from the start of ``serve_app``, so an early one is not lost.

    Installed before anything is bound: a signal that arrives while the
    application or the database is still starting stops the server as soon
    as it serves, instead of killing it half-started.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        self._previous = {sig: signal.signal(sig, self._record) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame: Any) -> None:
        if not self.stopping.is_set():
            log.info("%s received: finishing requests in flight", signal.Signals(signum).name)
        self.stopping.set()

    def wait(self, parent_pid: int | None, alive: Callable[[], bool] = lambda: True,
             step: Callable[[], None] | None = None) -> None:
        """Return once stopped, when *parent_pid* is gone, or when *alive* says no.

        *step* is called in a loop (an event loop's turn), else the thread sleeps.
        """
        while not self.stopping.is_set() and alive():
            if step is not None:
                step()
            else:
                self.stopping.wait(0.5)
            if parent_pid is not None and os.getppid() != parent_pid:
                # A worker whose supervisor was killed would otherwise serve on, unmanaged.
                log.warning("the supervisor (pid %d) is gone: finishing requests in flight",
                            parent_pid)
                self.stopping.set()


def _run_until_stopped(server: Any, signals: _StopSignals, parent_pid: int | None = None) -> None:
    """Run the event loop of a waitress *server* until a signal, then drain."""
    try:
        signals.wait(parent_pid, step=lambda: server.asyncore.loop(
            timeout=0.5, map=server._map, use_poll=True, count=1))
    finally:
        _drain(server)


def _drain(server: Any, timeout: float = DRAIN_TIMEOUT) -> None:
    """Stop accepting, let in-flight requests finish and flush, then close every channel."""
    server.accepting = False
    server.del_channel()
    server.socket.close()
    deadline = time.monotonic() + timeout
    while _busy(server) and time.monotonic() < deadline:
        server.asyncore.loop(timeout=0.05, map=server._map, use_poll=True, count=1)
    if _busy(server):
        log.warning("requests still running after %.0f s; stopping anyway", timeout)
    for channel in list(server._map.values()):
        channel.close()
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)


def _busy(server: Any) -> bool:
    """Whether a task runs or waits, or a channel of the server's map has work left."""
    if server.task_dispatcher.queue or server.task_dispatcher.active_count:
        return True
    return any(
        getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0)
        for channel in server._map.values()
        if channel is not server
    )
