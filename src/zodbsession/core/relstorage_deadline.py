"""A deadline on each statement RelStorage sends to PostgreSQL (``storage.request_timeout``).

A PostgreSQL that is stopped (SIGSTOP, a machine swapping to death, a
network that drops packets silently) keeps its sockets open: the kernel
still accepts and acknowledges what is sent, and a client waits for the
answer without end. Nothing the server could enforce (``statement_timeout``,
``lock_timeout``) runs while it is stopped, and libpq has no read timeout,
so every request would wait, and the thread pool fill up.

``bound_relstorage_calls`` gives each statement a RelStorage storage executes
through psycopg2 (``execute``, ``executemany``, ``callproc``, ``copy_expert``)
a deadline of *timeout* seconds, kept on the client: one watchdog thread per
process shuts down the socket of a statement still unanswered at its
deadline. libpq then sees the connection closed, the statement fails at once,
and ``StorageDeadline`` (a ``StorageUnavailable``: 503 with ``Retry-After``)
is raised in its place; RelStorage drops the dead connection and opens a new
one on its next use, so service is back as soon as the server answers again.
New connections are bounded by libpq's own ``connect_timeout``, which
``with_connect_timeout`` puts in a ``postgres://`` URI that does not set it.

``COMMIT`` (``connection.commit()``, RelStorage's ``tpc_finish``) is not a
cursor call and stays unbounded, as ZEO's ``tpc_finish`` does: once it is
sent the transaction may be committed, and giving up would only turn a slow
commit into an unknown one.

Threading: the watchdog's table is guarded by one condition; a statement
registers before it is sent and leaves when it returns.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import math
import os
import socket
import threading
import time
from typing import Any
from urllib.parse import parse_qsl

from zodbsession.core.errors import StorageUnavailable


class StorageDeadline(StorageUnavailable):
    """The storage's database did not answer one statement within ``storage.request_timeout``."""


class _Watchdog:
    """Shuts down the socket of every watched statement still running at its deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int]] = []  # heap of (deadline, token)
        self._running: dict[int, int] = {}  # token -> the connection's socket descriptor
        self._fired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, fd: int, timeout: float) -> int:
        token = next(self._tokens)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="zodbsession-sql-deadline",
                                                daemon=True)
                self._thread.start()
            self._running[token] = fd
            heapq.heappush(self._due, (time.monotonic() + timeout, token))
            self._cond.notify()
        return token

    def done(self, token: int) -> bool:
        """Forget *token*; whether its deadline passed (its socket was shut down)."""
        with self._cond:
            self._running.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._due and self._due[0][1] not in self._running:
                    heapq.heappop(self._due)  # finished in time
                if not self._due:
                    self._cond.wait()
                    continue
                deadline, token = self._due[0]
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._due)
                fd = self._running.pop(token)
                self._fired.add(token)
                _shut_down(fd)


def _shut_down(fd: int) -> None:
    """End the connection on socket *fd*: a read blocked on it returns at once."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


_watchdog = _Watchdog()


def _deadline_cursor_class(base: type, timeout: float) -> type:
    """A psycopg2 cursor class whose blocking calls end within *timeout* seconds."""

    def bounded(name: str) -> Any:
        call = getattr(base, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            token = _watchdog.watch(self.connection.fileno(), timeout)
            try:
                result = call(self, *args, **kwargs)
            except Exception as exc:
                if _watchdog.done(token):
                    raise StorageDeadline(
                        f"the database did not answer within {timeout:g} s (storage.request_timeout); "
                        "it may be stopped or overloaded") from exc
                raise
            _watchdog.done(token)
            return result

        method.__name__ = name
        return method

    names = ("execute", "executemany", "callproc", "copy_expert")
    return type("DeadlineCursor", (base,), {name: bounded(name) for name in names})


def bound_relstorage_calls(storage: Any, timeout: float) -> bool:
    """Give every statement RelStorage *storage* sends through psycopg2 a deadline of *timeout* s.

    Call it right after the storage is made, before a ``DB`` opens
    connections on it: connections it already holds are dropped (reopened
    on their next use, bounded). Returns whether it did (False for another
    storage or driver, or *timeout* <= 0).
    """
    if timeout <= 0 or type(storage).__module__.split(".")[0] != "relstorage":
        return False
    driver: Any = getattr(getattr(getattr(storage, "_adapter", None), "connmanager", None), "driver", None)
    connect = getattr(driver, "connect", None)
    if getattr(driver, "__name__", "") != "psycopg2" or not isinstance(connect, type):
        return False
    if getattr(connect, "zodbsession_deadline", None) == timeout:
        return True
    extensions = importlib.import_module("psycopg2.extensions")  # RelStorage's driver: installed
    cursor_class = _deadline_cursor_class(extensions.cursor, timeout)
    base = getattr(connect, "zodbsession_base", connect)

    class DeadlineConnection(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def cursor(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("cursor_factory", cursor_class)
            return super().cursor(*args, **kwargs)

    DeadlineConnection.zodbsession_deadline = timeout
    DeadlineConnection.zodbsession_base = base
    driver.connect = DeadlineConnection
    storage._load_connection.drop()
    storage._store_connection_pool.drop_all()
    return True


def with_connect_timeout(uri: str, timeout: float) -> str:
    """*uri* with libpq's ``connect_timeout`` (at least 2 s), for a postgres:// URI without it."""
    if timeout <= 0 or not uri.startswith("postgres://"):
        return uri
    query = uri.partition("?")[2]
    if any(key == "connect_timeout" for key, _ in parse_qsl(query)):
        return uri
    seconds = max(2, math.ceil(timeout))  # libpq reads less than 2 as 2
    return uri + ("&" if "?" in uri else "?") + f"connect_timeout={seconds}"
