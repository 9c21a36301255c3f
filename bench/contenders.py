"""The contenders: one WSGI app each, around the same ``counter_app``, on its own store.

Every contender is built in a fresh directory, filled with its filler
sessions, and exposes ``app`` (the WSGI callable the clients call) and
``bytes_written()`` (a counter whose difference over a phase is what the
phase added to the store). What each one does per request:

- ``bare``: the app alone, its "session" a dict in memory: the upper bound.
- ``plain-zodb``: open a pooled connection, look the session (a
  ``PersistentMapping``) up in an ``OOBTree`` by the cookie, change it,
  commit, close; a read aborts instead of committing. The floor for doing
  this on ZODB at all.
- ``zodbsession``: ``SessionPublisher`` with its defaults (and
  ``SessionManager``'s) around the app.
- ``zope.session``: zope.session's ``PersistentSessionDataContainer`` used as
  its ``Session.__getitem__`` does: ``container[client_id][product_id]``,
  created when missing, then the app; every request commits, as Zope's
  publisher does. Its ``ClientId`` machinery (an HMAC-signed cookie read
  through a Zope request) is skipped: the client id is the raw cookie value,
  which flatters zope.session by that HMAC.
- ``beaker-file``: Beaker's ``SessionMiddleware`` with ``type="file"``, its
  defaults otherwise (it rewrites the session file on reads, to save the
  access time), and ``session.save()`` after a write as Beaker requires.

All ZODB contenders use ``ZODB.DB(FileStorage(path))`` with ZODB's defaults.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import transaction
from persistent.mapping import PersistentMapping
from ZODB import DB
from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage

from bench.populate import (
    PLAIN_ROOT_KEY,
    ZOPE_PRODUCT,
    ZOPE_ROOT_KEY,
    populate_plain,
    populate_zodbsession,
    populate_zope_session,
)
from bench.workload import WSGIApp, counter_app
from zodbsession import SessionPublisher
from zodbsession.core.session import new_session_id

COOKIE = "bench"


def _cookie_value(environ: dict[str, Any]) -> str | None:
    # The reference's cookie handling is deliberately minimal: the floor.
    cookie = environ.get("HTTP_COOKIE")
    return cookie.partition("=")[2] or None if cookie else None


def _with_cookie(start_response: Callable[..., Any], session_id: str | None) -> Callable[..., Any]:
    if session_id is None:
        return start_response

    def wrapped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers.append(("Set-Cookie", f"{COOKIE}={session_id}; Path=/; HttpOnly"))
        return start_response(status, headers, exc_info)

    return wrapped


def file_size(path: Path) -> int:
    """Bytes in a file (a FileStorage only ever grows between packs)."""
    return os.path.getsize(path)


def process_bytes_written() -> int:
    """Bytes this process has passed to ``write()`` so far (``wchar`` in /proc/self/io)."""
    with open("/proc/self/io") as io_stats:
        for line in io_stats:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar line")


class Contender:
    """One way of serving ``counter_app``; subclasses set ``app`` and the store."""

    name = ""
    #: What ``bytes_written`` measures, for the table's notes.
    bytes_meaning = "bytes appended to the FileStorage"

    app: WSGIApp

    def bytes_written(self) -> int:
        return 0

    def close(self) -> None:
        """Release the store (the directory is removed by the caller)."""


class Bare(Contender):
    """The app with a dict in memory for a session: no store, no lookup."""

    name = "bare"
    bytes_meaning = "nothing is stored"

    def __init__(self, workdir: Path, filler: int) -> None:
        state: dict[str, int] = {}
        inner = counter_app("bench.session")

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            environ["bench.session"] = state
            return inner(environ, start_response)

        self.app = app


class _FileStorageContender(Contender):
    def __init__(self, workdir: Path) -> None:
        self.path = workdir / f"{self.name}.fs"
        self.db = DB(FileStorage(str(self.path)))

    def bytes_written(self) -> int:
        return file_size(self.path)

    def close(self) -> None:
        self.db.close()


class PlainZODB(_FileStorageContender):
    """The floor: pooled connection, ``OOBTree`` lookup, change, commit (or abort), close."""

    name = "plain-zodb"

    def __init__(self, workdir: Path, filler: int, *, populate: bool = True) -> None:
        super().__init__(workdir)
        if populate:
            populate_plain(self.db, filler)
        inner = counter_app("bench.session")
        db = self.db

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            session_id = _cookie_value(environ)
            new_id = None
            conn = db.open()
            try:
                tree = conn.root()[PLAIN_ROOT_KEY]
                session = tree.get(session_id) if session_id else None
                if session is None:
                    new_id = new_session_id()
                    session = tree[new_id] = PersistentMapping()
                environ["bench.session"] = session
                body = list(inner(environ, _with_cookie(start_response, new_id)))
                if environ["REQUEST_METHOD"] == "POST":
                    transaction.commit()
                else:
                    transaction.abort()
                return body
            except BaseException:
                transaction.abort()
                raise
            finally:
                conn.close()

        self.app = app


class ZodbSession(_FileStorageContender):
    """``SessionPublisher(app, db)`` with every default."""

    name = "zodbsession"

    def __init__(self, workdir: Path, filler: int, *, populate: bool = True) -> None:
        super().__init__(workdir)
        if populate:
            populate_zodbsession(self.db, [(filler, time.time())])
        self.publisher = SessionPublisher(counter_app("zodbsession.session"), self.db)
        self.app = self.publisher


class ZopeSession(_FileStorageContender):
    """zope.session's ``PersistentSessionDataContainer``, one transaction per request."""

    name = "zope.session"

    def __init__(self, workdir: Path, filler: int) -> None:
        from zope.session.session import SessionData, SessionPkgData

        super().__init__(workdir)
        populate_zope_session(self.db, filler, time.time())
        inner = counter_app("bench.session")
        db = self.db

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            client_id = _cookie_value(environ)
            new_id = None
            if client_id is None:
                client_id = new_id = new_session_id()
            conn = db.open()
            try:
                container = conn.root()[ZOPE_ROOT_KEY]
                # zope.session.session.Session.__getitem__, inlined:
                try:
                    data = container[client_id]
                except KeyError:
                    data = container[client_id] = SessionData()
                try:
                    package = data[ZOPE_PRODUCT]
                except KeyError:
                    package = data[ZOPE_PRODUCT] = SessionPkgData()
                environ["bench.session"] = package
                body = list(inner(environ, _with_cookie(start_response, new_id)))
                transaction.commit()
                return body
            except BaseException:
                transaction.abort()
                raise
            finally:
                conn.close()

        self.app = app

    def time_sweep_request(self, client_app_call: Callable[[], None]) -> float:
        """Microseconds of one request that runs zope.session's implicit sweep.

        The container sweeps every session on the request path once per
        ``resolution`` (600 s) per connection; forcing the timer back makes
        the next request do it now, as one in every ten minutes does.
        """
        conn = self.db.open()
        try:
            conn.root()[ZOPE_ROOT_KEY]._v_last_sweep = 0
        finally:
            transaction.abort()
            conn.close()
        start = time.perf_counter_ns()
        client_app_call()
        return (time.perf_counter_ns() - start) / 1000


class BeakerFile(Contender):
    """Beaker's ``SessionMiddleware`` with the file backend."""

    name = "beaker-file"
    bytes_meaning = "bytes written by the process (Beaker rewrites files, /proc/self/io wchar)"

    def __init__(self, workdir: Path, filler: int) -> None:
        from beaker.middleware import SessionMiddleware

        from bench.workload import Client

        options = {
            "session.type": "file",
            "session.data_dir": str(workdir / "beaker" / "data"),
            "session.lock_dir": str(workdir / "beaker" / "lock"),
            "session.key": COOKIE,
        }
        self.app = SessionMiddleware(counter_app("beaker.session", explicit_save=True), options)
        # No bulk API: the filler sessions are made the way users make them.
        for _ in range(filler):
            Client(self.app).write()

    def bytes_written(self) -> int:
        return process_bytes_written()


#: The request-serving contenders, in table order.
CONTENDERS: dict[str, type[Contender]] = {
    "bare": Bare,
    "plain-zodb": PlainZODB,
    "zodbsession": ZodbSession,
    "zope.session": ZopeSession,
    "beaker-file": BeakerFile,
}


def raw_commit_times(workdir: Path, count: int) -> list[int]:
    """Nanoseconds per FileStorage commit of one small object, through the storage API.

    tpc_begin, store one record, tpc_vote, tpc_finish (with its fsync): what
    any ZODB write request pays at the least, without connections or pickling.
    """
    path = workdir / "raw.fs"
    db = DB(FileStorage(str(path)))
    try:
        with db.transaction() as conn:
            conn.root()["counter"] = PersistentMapping(count=0)
        with db.transaction() as conn:
            oid = conn.root()["counter"]._p_oid
        storage = db.storage
        data, serial = storage.load(oid)
        times = []
        for i in range(count):
            start = time.perf_counter_ns()
            txn = TransactionMetaData()
            storage.tpc_begin(txn)
            storage.store(oid, serial, data, "", txn)
            storage.tpc_vote(txn)
            serial = storage.tpc_finish(txn)
            times.append(time.perf_counter_ns() - start)
            if i == 0:
                times.clear()  # the first one pays for opening the file's pages
        return times
    finally:
        db.close()


def fsync_times(workdir: Path, count: int) -> list[int]:
    """Nanoseconds per append of 100 bytes plus ``os.fsync``: the disk's own floor."""
    fd = os.open(workdir / "fsync.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        times = []
        for _ in range(count):
            start = time.perf_counter_ns()
            os.write(fd, b"x" * 100)
            os.fsync(fd)
            times.append(time.perf_counter_ns() - start)
        return times
    finally:
        os.close(fd)
