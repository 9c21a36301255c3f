"""``serve --workers N``: a pre-fork supervisor, N server processes on one address.

The parent binds the listening socket and forks N workers. Each opens its
own database connection *after* the fork (a ZEO or RelStorage client: a
ZODB storage and its threads must never cross a fork) and serves with
waitress on the inherited socket; the kernel hands each new connection to
one of them. The parent only supervises: it restarts a worker that dies, and
on SIGTERM or Ctrl-C forwards SIGTERM, waits for the workers to drain and
exits 0.

Expiry and the admin listener run in worker 0 only (and in its
replacement), so N workers do not sweep the same sessions at once; the parent
binds the admin address too, so a restarted worker 0 finds it still bound.
Every worker counts its metrics into prometheus_client's multiprocess
directory (``server.metrics_directory`` chose it before any import), so
worker 0's ``/metrics`` and dashboard show the sum of all of them; the parent
forgets a dead worker's per-process gauges when it reaps it. The per-address
budget of new sessions (``core.budget``) is one table all workers share.
Across machines, each ``serve`` runs its own janitor; concurrent sweeps are
safe (each victim is re-checked in the deleting transaction) but wasted
work, so set ``janitor.interval = 0`` on all machines but one:
dm.zope.session's lesson, one cleaner per cluster.

Threading: the parent is single-threaded and never opens the database;
signal handlers only record the signal, and ``run``'s loop acts on it.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zodbsession.config import Settings
from zodbsession.core.budget import share_across_forks
from zodbsession.core.db import redact_uri
from zodbsession.core.errors import ConfigError, ZodbSessionError
from zodbsession.serve.apps import LoadedApp

log = logging.getLogger(__name__)

#: How long a shutdown waits for requests in flight before giving up on them.
DRAIN_TIMEOUT = 30.0

#: prometheus_client's switch to multiprocess mode (``zodbsession.ops.metrics.MULTIPROC_ENV``,
#: spelt out here because importing that module would import prometheus_client too early).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: How long a stopping supervisor waits for its workers before killing them.
STOP_TIMEOUT = DRAIN_TIMEOUT + 10.0
#: A worker that lived less than this is restarted after ``RESTART_DELAY``, not at once,
#: so that one failing at start-up (its ZEO server is down) is not forked in a tight loop.
MIN_UPTIME = 5.0
RESTART_DELAY = 2.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


class WorkerFailed(ZodbSessionError, RuntimeError):
    """A worker could not start while ``serve --workers`` was starting up."""


@dataclass
class _Worker:
    index: int
    pid: int
    started: float
    ready: bool = False


class Supervisor:
    """Forks ``server.workers`` processes serving *loaded* on one socket, and keeps them running.

    Each worker calls *worker_main* (``server.serve_app``) with the settings,
    the application and the sockets; this module never imports the server.

    ``run()`` returns once every worker has exited after SIGTERM or Ctrl-C.
    It raises ``ConfigError`` when the address cannot be bound and
    ``WorkerFailed`` when a worker fails before all of them served once
    (e.g. no ZEO server answered): the others are stopped first. Later, a
    worker that dies is restarted.
    """

    def __init__(self, settings: Settings, loaded: LoadedApp, *, worker_main: Callable[..., None],
                 config_name: str = "defaults") -> None:
        self.settings = settings
        self.loaded = loaded
        self.app_name = loaded.spec
        self.config_name = config_name
        self.worker_main = worker_main
        self.count = settings.server.workers
        self.workers: dict[int, _Worker] = {}  # {pid -> worker}
        self._restarts: dict[int, float] = {}  # {index -> monotonic time to fork it again}
        self._failures: dict[int, str] = {}  # {index -> why it could not serve}
        self._signals: list[int] = []
        self._messages = b""
        self._sock: socket.socket | None = None
        self._admin_sock: socket.socket | None = None

    # -- the parent ---------------------------------------------------------------

    def run(self) -> None:
        """Bind, fork the workers, supervise until told to stop, then stop them all."""
        self._sock = bind_socket(self.settings.server.host, self.settings.server.port)
        if self.settings.admin.enabled:
            try:
                self._admin_sock = bind_socket(self.settings.admin.host, self.settings.admin.port,
                                               key="admin")
            except ConfigError:
                self._sock.close()
                raise
        self._wake_r, self._wake_w = _pipe()
        self._ready_r, self._ready_w = _pipe()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        previous_fd = signal.set_wakeup_fd(self._wake_w)
        if self.settings.sessions.max_sessions and self.settings.sessions.new_per_address_per_minute:
            share_across_forks()  # the workers spend one per-address budget between them
        try:
            # Worker 0 first: on a fresh database it creates the root and the
            # session container (and RelStorage its schema) while nobody races it.
            self._fork(0)
            booted = self._boot()
            if booted:
                for index in range(1, self.count):
                    self._fork(index)
                booted = self._boot()
            if booted:
                port = self._sock.getsockname()[1]
                log.info("serving %s on http://%s:%s/ with %d workers of %d threads, pids %s "
                         "(storage %s, config %s)", self.app_name, self.settings.server.host,
                         port, self.count, self.settings.server.threads,
                         " ".join(str(w.pid) for w in self._by_index()),
                         redact_uri(self.settings.storage.uri),
                         self.config_name)
                self._supervise()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
                os.close(fd)
            self._sock.close()
            if self._admin_sock is not None:
                self._admin_sock.close()
        log.info("stopped; all workers exited")

    def _on_signal(self, signum: int, frame: Any) -> None:
        # SIGCHLD only needs to wake _wait (through the wakeup fd); the others stop.
        if signum != signal.SIGCHLD:
            self._signals.append(signum)

    def _stopping(self) -> bool:
        return bool(self._signals)

    def _boot(self) -> bool:
        """Wait until every forked worker served once; False if told to stop meanwhile."""
        while not all(w.ready for w in self.workers.values()):
            self._wait(1.0)
            if self._stopping():
                return False
            for worker, status in self._reap():
                raise WorkerFailed(f"worker {worker.index} could not start: "
                                   f"{self._failure(worker.index) or _describe(status)}")
        return True

    def _supervise(self) -> None:
        while not self._stopping():
            self._wait(1.0)
            for worker, status in self._reap():
                if self._stopping():
                    break
                lived = time.monotonic() - worker.started
                delay = 0.0 if lived >= MIN_UPTIME else RESTART_DELAY
                why = self._failure(worker.index) or _describe(status)
                log.warning("worker %d (pid %d) exited after %.1f s (%s); restarting it%s",
                            worker.index, worker.pid, lived, why,
                            f" in {delay:.0f} s" if delay else "")
                self._restarts[worker.index] = time.monotonic() + delay
            now = time.monotonic()
            for index, due in sorted(self._restarts.items()):
                if due <= now:
                    del self._restarts[index]
                    self._fork(index)

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for them to drain, SIGKILL what is left."""
        if not self.workers:
            return
        why = f"{signal.Signals(self._signals[0]).name} received: " if self._signals else ""
        log.info("%sstopping %d worker(s): they finish the requests in flight", why,
                 len(self.workers))
        for pid in self.workers:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.workers and time.monotonic() < deadline:
            self._wait(0.5)
            self._reap()
        for pid in list(self.workers):
            log.warning("worker pid %d did not stop within %.0f s; killing it", pid, STOP_TIMEOUT)
            _kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            del self.workers[pid]

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal, a worker's message or *timeout*; read the messages."""
        try:
            readable, _, _ = select.select([self._wake_r, self._ready_r], [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in readable:
            _drain(self._wake_r)
        if self._ready_r in readable:
            self._messages += _drain(self._ready_r)
            *lines, self._messages = self._messages.split(b"\n")
            for line in lines:
                self._note(line.decode("utf-8", "replace"))

    def _note(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        index_text, _, message = rest.partition(" ")
        index = int(index_text) if index_text.isdigit() else -1
        if kind == "ready":
            for worker in self.workers.values():
                if worker.index == index:
                    worker.ready = True
        elif kind == "failed":
            self._failures[index] = message

    def _failure(self, index: int) -> str:
        self._wait(0)  # a worker writes its reason just before it exits
        return self._failures.pop(index, "")

    def _reap(self) -> list[tuple[_Worker, int]]:
        """The workers that exited since last asked, with their wait statuses."""
        gone = []
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is not None:
                gone.append((worker, status))
                _forget_metrics(pid)
        return gone

    def _by_index(self) -> list[_Worker]:
        return sorted(self.workers.values(), key=lambda w: w.index)

    def _fork(self, index: int) -> None:
        self._failures.pop(index, None)
        pid = os.fork()
        if pid == 0:
            self._child(index)  # never returns
        self.workers[pid] = _Worker(index, pid, time.monotonic())

    # -- a worker -------------------------------------------------------------

    def _child(self, index: int) -> None:
        """Serve as worker *index*, then leave the process without running the parent's exit code."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.close(self._wake_r)
            os.close(self._wake_w)
            os.close(self._ready_r)
            admin_sockets = [self._admin_sock] if self._admin_sock is not None else []
            if index != 0:
                for sock in admin_sockets:
                    sock.close()  # worker 0's alone
                admin_sockets = []
            parent = os.getppid()
            self.worker_main(
                self.settings, self.loaded, config_name=self.config_name,
                sockets=[self._sock], janitor=index == 0, admin=index == 0,
                admin_sockets=admin_sockets, label=f"worker {index}: ",
                parent_pid=parent, on_ready=lambda server: self._tell(f"ready {index}"),
            )
            code = 0
        except ZodbSessionError as exc:
            log.error("worker %d: %s", index, exc)
            self._tell(f"failed {index} {exc}")
            code = 2
        except BaseException as exc:
            log.exception("worker %d failed", index)
            self._tell(f"failed {index} {type(exc).__name__}: {exc}")
        finally:
            logging.shutdown()
            os._exit(code)

    def _tell(self, message: str) -> None:
        data = " ".join(message.split()).encode("utf-8")
        try:
            os.write(self._ready_w, data[: select.PIPE_BUF - 1] + b"\n")  # one atomic write
        except OSError:
            log.warning("could not tell the supervisor: %s", message)


def bind_socket(host: str, port: int, *, key: str = "server") -> socket.socket:
    """A listening TCP socket on *host*:*port*, for workers to inherit.

    Errors name the settings *key*.host or *key*.port.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"{key}.host", f"cannot use {host!r}: {exc.strerror or exc}; use an IP "
                          "address or a name this machine resolves") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{key}.port", f"cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
    return sock


def _forget_metrics(pid: int) -> None:
    """Drop a reaped worker's per-process gauges from the combined metrics, if they are kept."""
    if os.environ.get(MULTIPROC_ENV):
        from zodbsession.ops.metrics import mark_process_dead  # the mode is chosen by now

        try:
            mark_process_dead(pid)
        except OSError as exc:
            log.warning("could not drop the metrics of worker pid %d: %s", pid, exc)


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    return read_end, write_end


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
