"""Maintenance of a session database: expire, pack, inspect, revoke and verify.

The Python API behind the ``zodbsession`` maintenance commands. Every function
takes an open ``ZODB.DB`` and is safe on a live database shared with running
servers (through ZEO): it opens its own connection with its own explicit
transaction manager, works in short transactions retried on conflicts, never
keeps a transaction open across a long loop, and closes the connection in
``finally``. Interrupting a batched function (Ctrl-C) aborts the current batch
and keeps the committed ones, so the database stays consistent.

The module is longer than the house's ~400 lines on purpose: it is the one
surface the CLI wraps and its parts share the connection, retry and chunking
helpers. ``verify`` is the part to move out first if it grows.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import os
import random
import reprlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from itertools import islice
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import BTrees.check
import transaction
from BTrees.QQBTree import QQBTree
from persistent.mapping import PersistentMapping
from transaction.interfaces import NoTransaction, TransientError
from ZODB import DB
from ZODB.Connection import Connection
from ZODB.FileStorage import FileStorage
from ZODB.POSException import POSKeyError
from ZODB.scripts import fstest
from ZODB.serialize import get_refs
from ZODB.utils import get_pickle_metadata, load_current, oid_repr, p64

from zodbsession.db import SESSIONS_DATABASE
from zodbsession.errors import ConfigError, SessionNotFound
from zodbsession.manager import SessionManager
from zodbsession.session import Session, ids_equal, is_well_formed_id
from zodbsession.store import ROOT_KEY, SessionContainer, expiry_slot

__all__ = [
    "CHUNK_SIZE",
    "MAINTENANCE_KEY",
    "Check",
    "DatabaseStats",
    "PackResult",
    "ProgressCallback",
    "SessionDetail",
    "SessionInfo",
    "Stats",
    "VerifyReport",
    "expire_sessions",
    "list_sessions",
    "pack",
    "revoke",
    "revoke_all",
    "revoke_user",
    "show_session",
    "stats",
    "verify",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Called with the number of items done so far, after each committed batch.
ProgressCallback = Callable[[int], None]

#: The root key of the small record ``pack`` leaves in the packed database,
#: because FileStorage keeps no trace of when it was last packed:
#: ``{"last_pack": <time it ran>, "last_pack_to": <the pack time>}``.
MAINTENANCE_KEY = "zodbsession.maintenance"

#: Keys read per transaction when walking a tree; memory stays flat in it.
CHUNK_SIZE = 1000

#: Tries of one transaction that conflicts with concurrent requests.
ATTEMPTS = 5

#: Problems listed per check before the rest are only counted.
MAX_PROBLEMS = 50

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 200
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 20


# -- results ------------------------------------------------------------------


class _AsDict:
    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values."""
        fields: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]
        return fields


@dataclass(frozen=True, repr=False)
class SessionInfo(_AsDict):
    """A session's bookkeeping, never its data: safe to list and log.

    The id is the session's bearer secret: ``repr`` shows only its start.
    """

    id: str
    user_id: str | None
    created: float
    last_access: float
    deadline: float
    live: bool
    data_keys: int  # how many keys the data holds; the values are never read

    @classmethod
    def of(cls, session: Session, manager: SessionManager, now: float) -> SessionInfo:
        """The bookkeeping of a loaded *session* as seen by *manager* at *now*."""
        deadline = session.deadline(manager.idle_timeout, manager.max_lifetime)
        return cls(
            id=session.id,
            user_id=session.user_id,
            created=session.created,
            last_access=session.last_access,
            deadline=deadline,
            live=now < deadline,
            data_keys=len(session),
        )

    def __repr__(self) -> str:
        return (
            f"SessionInfo(id={self.id[:8]!r}..., user_id={self.user_id!r}, "
            f"live={self.live}, deadline={self.deadline})"
        )


@dataclass(frozen=True)
class SessionDetail:
    """One session's bookkeeping plus its data, each value as a bounded ``repr``."""

    info: SessionInfo
    data: Mapping[str, str]

    def as_dict(self) -> dict[str, Any]:
        """The bookkeeping fields and ``data`` as plain JSON-ready values."""
        return {**self.info.as_dict(), "data": dict(self.data)}


@dataclass(frozen=True)
class DatabaseStats(_AsDict):
    """Figures about one database of a (multi-)database."""

    name: str
    storage_class: str
    storage_name: str
    size_bytes: int  # what the storage reports: the file's length for a FileStorage
    last_pack: float | None  # from the record ``pack`` leaves; None: never packed by us
    cached_objects: int  # non-ghost objects in the caches of its connection pool


@dataclass(frozen=True)
class Stats(_AsDict):
    """Figures about the sessions and the databases holding them.

    On a live database the session figures come from several short
    transactions, so they can be off by the sessions changed meanwhile.
    """

    taken_at: float  # the manager's clock when counting started
    stored_sessions: int  # the container's Length: live plus not yet swept
    expired_sessions: int  # stored but past a timeout; the next sweep removes them
    live_sessions: int  # stored_sessions - expired_sessions
    users: int  # users with at least one stored session
    sessions_database: str
    databases: tuple[DatabaseStats, ...]


@dataclass(frozen=True)
class PackResult(_AsDict):
    """What ``pack`` did, for the CLI to print."""

    database: str
    storage_class: str
    path: str | None  # the packed file, when the storage is a FileStorage
    size_before: int
    size_after: int
    duration: float  # seconds spent in the storage's pack
    pack_time: float  # revisions older than this that nothing needs were removed
    fsynced: bool  # the packed file and its directory were fsynced
    recorded: bool  # the pack time was written to MAINTENANCE_KEY


@dataclass(frozen=True)
class Check(_AsDict):
    """The outcome of one check on one database."""

    database: str
    name: str
    outcome: Literal["passed", "failed", "skipped"]
    detail: str = ""


@dataclass(frozen=True)
class VerifyReport(_AsDict):
    """What ``verify`` found. A skipped check is listed as skipped, never as passed."""

    checks: tuple[Check, ...]
    problems: tuple[str, ...]
    notes: tuple[str, ...]  # worth a look, but no evidence of damage

    @property
    def sound(self) -> bool:
        """Whether every check that ran passed."""
        return not self.problems

    @property
    def skipped(self) -> tuple[Check, ...]:
        """The checks that could not run here, with the reason in ``detail``."""
        return tuple(check for check in self.checks if check.outcome == "skipped")

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "sound": self.sound}


# -- connections and transactions ------------------------------------------------


@contextmanager
def _connection(db: DB) -> Iterator[Connection]:
    """A connection with its own explicit transaction manager, closed afterwards."""
    tm = transaction.TransactionManager(explicit=True)
    conn = db.open(tm)
    try:
        yield conn
    finally:
        _abort_quietly(tm)
        # Give the pool back a connection that holds no maintenance objects.
        conn.cacheMinimize()
        conn.close()


def _abort_quietly(tm: transaction.TransactionManager) -> None:
    with suppress(NoTransaction):  # explicit mode: nothing begun, nothing to abort
        tm.abort()


def _in_transaction(conn: Connection, work: Callable[[], T], *, write: bool) -> T:
    """Run *work* in a transaction of its own, committed if *write*, else aborted.

    A conflict with concurrent requests is retried with a short random
    back-off, up to ``ATTEMPTS`` times; anything else (KeyboardInterrupt
    included) aborts and propagates. ZEO's ``ClientDisconnected`` is a
    ``TransientError`` too, and retrying it is safe here, unlike in the
    publisher: every maintenance transaction is idempotent (a revoked or
    expired session is simply not found again), so a commit whose outcome
    was unknown can only make a returned count too low.
    """
    tm = conn.transaction_manager
    attempt = 1
    while True:
        tm.begin()
        try:
            result = work()
            if write:
                tm.commit()
            else:
                tm.abort()
            return result
        except TransientError:
            _abort_quietly(tm)
            if attempt >= ATTEMPTS:
                raise
            log.info("maintenance transaction conflicted (attempt %d), retrying", attempt)
            time.sleep(random.uniform(0, 0.01 * 2**attempt))
            attempt += 1
        except BaseException:
            _abort_quietly(tm)
            raise


def _keys_after(tree: Any, cursor: Any, count: int, **bounds: Any) -> list[Any]:
    """Up to *count* keys of *tree* after *cursor* (None: from the start)."""
    if cursor is not None:
        bounds.update(min=cursor, excludemin=True)
    return list(islice(tree.keys(**bounds), count))


def _run_batches(
    conn: Connection,
    step: Callable[[Any], tuple[int, Any, bool]],
    progress: ProgressCallback | None,
) -> int:
    """Commit ``step(cursor) -> (done, next_cursor, finished)`` until finished.

    Each step is a transaction of its own; a cursor (the last key handled)
    rather than "the first keys left" guarantees the walk ends even while
    requests keep adding keys.
    """
    done = 0
    cursor = None
    while True:
        count, cursor, finished = _in_transaction(conn, partial(step, cursor), write=True)
        done += count
        if progress is not None:
            progress(done)
        if finished:
            return done


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be a whole number of at least 1, not {value!r}")


# -- expiring and revoking -------------------------------------------------------


def expire_sessions(
    db: DB,
    manager: SessionManager,
    *,
    batch_size: int = 500,
    progress: ProgressCallback | None = None,
) -> int:
    """Remove every session past a timeout; returns how many were removed.

    A thin wrapper over ``SessionManager.expire``, which already works in
    short retried batches and re-checks each victim: this only supplies a
    private connection, so it can run beside a live server.
    """
    _positive("batch_size", batch_size)

    def report(done: int) -> None:  # the shape of manager.Progress
        if progress is not None:
            progress(done)

    with _connection(db) as conn:
        return manager.expire(conn, batch_size=batch_size, progress=report)


def revoke(db: DB, manager: SessionManager, session_id: str) -> bool:
    """End one session now; returns whether there was one.

    A malformed id finds nothing and costs no lookup.
    """
    if not is_well_formed_id(session_id):
        return False
    with _connection(db) as conn:
        return _in_transaction(conn, lambda: manager.revoke(conn, session_id), write=True)


def revoke_user(db: DB, manager: SessionManager, user_id: str, *, batch_size: int = 500) -> int:
    """End every session of one user ("log out everywhere"); returns how many.

    Works in batches of *batch_size*, so even a user with a huge number of
    sessions (a runaway client) holds up requests for one small commit only.
    """
    _positive("batch_size", batch_size)

    def step(conn: Connection, cursor: str | None) -> tuple[int, str | None, bool]:
        container = manager.container(conn, create=False)
        ids = container.by_user.get(user_id) if container is not None else None
        return _revoke_ids(conn, manager, ids, cursor, batch_size)

    with _connection(db) as conn:
        return _run_batches(conn, partial(step, conn), None)


def revoke_all(
    db: DB,
    manager: SessionManager,
    *,
    batch_size: int = 500,
    progress: ProgressCallback | None = None,
) -> int:
    """End every stored session, in batches; returns how many.

    Sessions created while it runs may survive if their ids sort before the
    batch being worked on; run it again after stopping the servers for a
    guaranteed empty container.
    """
    _positive("batch_size", batch_size)

    def step(conn: Connection, cursor: str | None) -> tuple[int, str | None, bool]:
        container = manager.container(conn, create=False)
        ids = container.sessions if container is not None else None
        return _revoke_ids(conn, manager, ids, cursor, batch_size)

    with _connection(db) as conn:
        return _run_batches(conn, partial(step, conn), progress)


def _revoke_ids(
    conn: Connection, manager: SessionManager, ids: Any, cursor: str | None, batch_size: int
) -> tuple[int, str | None, bool]:
    if ids is None:
        return 0, cursor, True
    batch = _keys_after(ids, cursor, batch_size)  # a list: the tree changes below
    revoked = sum(manager.revoke(conn, session_id) for session_id in batch)
    return revoked, (batch[-1] if batch else cursor), len(batch) < batch_size


# -- inspecting -------------------------------------------------------------------


def list_sessions(
    db: DB,
    manager: SessionManager,
    *,
    user: str | None = None,
    limit: int | None = None,
    include_expired: bool = False,
) -> Iterator[SessionInfo]:
    """The bookkeeping of stored sessions in id order, never their data.

    With *user*, only that user's sessions (through the user index). Expired
    but not yet swept sessions are left out unless *include_expired*.

    Sessions are read ``CHUNK_SIZE`` at a time, each chunk through a fresh
    connection and transaction whose cache is emptied afterwards, so listing
    hundreds of thousands keeps memory flat, and an abandoned iterator holds
    no connection. Each chunk is its own snapshot of a live database.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ConfigError("limit", f"must be None or a whole number of at least 0, not {limit!r}")
    return _list_sessions(db, manager, user, limit, include_expired)


def _list_sessions(
    db: DB, manager: SessionManager, user: str | None, limit: int | None, include_expired: bool
) -> Iterator[SessionInfo]:
    now = manager.clock()
    left = math.inf if limit is None else limit
    cursor: str | None = None
    while left > 0:
        with _connection(db) as conn:
            read = partial(_read_infos, conn, manager, user, cursor, now)
            infos, cursor, finished = _in_transaction(conn, read, write=False)
        for info in infos:
            if left <= 0:
                return
            if info.live or include_expired:
                left -= 1
                yield info
        if finished:
            return


def _read_infos(
    conn: Connection, manager: SessionManager, user: str | None, cursor: str | None, now: float
) -> tuple[list[SessionInfo], str | None, bool]:
    container = manager.container(conn, create=False)
    if container is None:
        return [], cursor, True
    ids = container.sessions if user is None else container.by_user.get(user)
    if ids is None:
        return [], cursor, True
    keys = _keys_after(ids, cursor, CHUNK_SIZE)
    infos = []
    for session_id in keys:
        session = container.get(session_id)
        if session is not None:  # None only for a damaged user index: see verify()
            infos.append(SessionInfo.of(session, manager, now))
    return infos, (keys[-1] if keys else cursor), len(keys) < CHUNK_SIZE


def show_session(db: DB, manager: SessionManager, session_id: str) -> SessionDetail:
    """One stored session, live or expired, with its data as bounded reprs.

    Reading it writes nothing (the access time is not touched). Raises
    ``SessionNotFound`` for an id that is malformed or stored nowhere.
    """
    if not is_well_formed_id(session_id):
        raise SessionNotFound(
            f"{session_id!r:.60} is not a session id (expected 43 URL-safe base64 characters)"
        )

    def read(conn: Connection) -> SessionDetail | None:
        container = manager.container(conn, create=False)
        session = container.get(session_id) if container is not None else None
        if session is None or not ids_equal(session.id, session_id):
            return None
        data = {key: _repr.repr(value) for key, value in session.data().items()}
        return SessionDetail(
            SessionInfo.of(session, manager, manager.clock()), MappingProxyType(data)
        )

    with _connection(db) as conn:
        detail = _in_transaction(conn, partial(read, conn), write=False)
    if detail is None:
        raise SessionNotFound(f"no stored session has the id {session_id[:8]}...")
    return detail


def stats(db: DB, manager: SessionManager) -> Stats:
    """Figures about the sessions and every database of *db*.

    Expired-but-not-swept sessions are counted from the expiry index: only
    its entries that can be due are read and re-checked against the
    manager's timeouts, so the cost follows the expired sessions, not all of
    them. The count is exact, including sessions that died within the
    current expiry slot (which the sweep only reaches a minute later): an
    entry is filed under its session's deadline at filing time, and
    deadlines only grow, so every expired session has an entry in a slot no
    later than *now*'s. Only a manager with shorter timeouts than the one
    that filed the entries sees too few. Counting users walks the keys of the
    user index. All of it is read in short transactions of ``CHUNK_SIZE``
    keys, so on a live database the figures may be off by what changed
    meanwhile (``live_sessions`` is ``stored - expired``).
    """
    now = manager.clock()
    cached = {name: database.cacheSize() for name, database in db.databases.items()}
    with _connection(db) as conn:
        stored = _in_transaction(conn, partial(_stored, conn, manager), write=False)
        expired = _count_expired(conn, manager, now)
        users = _count_keys(conn, manager, lambda container: container.by_user)
        databases = tuple(
            DatabaseStats(
                name=name,
                storage_class=_class_name(database.storage),
                storage_name=str(database.storage.getName()),
                size_bytes=int(database.getSize()),
                last_pack=_in_transaction(conn, partial(_last_pack, conn, name), write=False),
                cached_objects=cached[name],
            )
            for name, database in sorted(db.databases.items())
        )
    return Stats(
        taken_at=now,
        stored_sessions=stored,
        expired_sessions=expired,
        live_sessions=max(stored - expired, 0),
        users=users,
        sessions_database=manager.database or db.database_name,
        databases=databases,
    )


def _stored(conn: Connection, manager: SessionManager) -> int:
    container = manager.container(conn, create=False)
    return container.count() if container is not None else 0


def _count_expired(conn: Connection, manager: SessionManager, now: float) -> int:
    upper = (expiry_slot(now) + 1,)  # every (slot, id) with slot <= expiry_slot(now)
    seen: set[str] = set()  # a session re-filed between chunks is counted once

    def step(cursor: Any) -> tuple[int, Any, bool]:
        container = manager.container(conn, create=False)
        if container is None:
            return 0, cursor, True
        entries = _keys_after(container.expiry, cursor, CHUNK_SIZE, max=upper, excludemax=True)
        expired = 0
        counted: set[str] = set()  # merged into seen only once this attempt got through
        for _slot, session_id in entries:
            if session_id in seen or session_id in counted:
                continue
            counted.add(session_id)
            session = container.get(session_id)
            if session is not None and not manager.is_live(session, now):
                expired += 1
        seen.update(counted)
        conn.cacheMinimize()
        return expired, (entries[-1] if entries else cursor), len(entries) < CHUNK_SIZE

    return _walk(conn, step)


def _count_keys(
    conn: Connection, manager: SessionManager, tree_of: Callable[[SessionContainer], Any]
) -> int:
    def step(cursor: Any) -> tuple[int, Any, bool]:
        container = manager.container(conn, create=False)
        if container is None:
            return 0, cursor, True
        keys = _keys_after(tree_of(container), cursor, CHUNK_SIZE)
        conn.cacheMinimize()
        return len(keys), (keys[-1] if keys else cursor), len(keys) < CHUNK_SIZE

    return _walk(conn, step)


def _walk(conn: Connection, step: Callable[[Any], tuple[int, Any, bool]]) -> int:
    """Sum ``step(cursor)`` over read-only transactions until it says finished."""
    total = 0
    cursor = None
    while True:
        count, cursor, finished = _in_transaction(conn, partial(step, cursor), write=False)
        total += count
        if finished:
            return total


def _last_pack(conn: Connection, name: str) -> float | None:
    record = _root_of(conn, name).get(MAINTENANCE_KEY)
    return record.get("last_pack") if record is not None else None


def _root_of(conn: Connection, name: str) -> Any:
    if name != conn.db().database_name:
        conn = conn.get_connection(name)
    return conn.root()


def _class_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


# -- packing ----------------------------------------------------------------------


def pack(db: DB, *, days: float = 0, database: str | None = None) -> PackResult:
    """Pack one database: drop revisions older than *days* that nothing needs.

    *database* names a database of the multi-database (``db.databases``);
    by default the sessions' own database when there is one, else the main
    one, since expiry churn makes the sessions' file grow fastest.

    Packing garbage-collects only within one database: an object referenced
    solely from *another* database of the multi-database is collected. The
    session container lives in the sessions database's own root, so the
    sessions are safe; applications that reference main objects from session
    data must not pack main alone.

    ZODB renames ``Data.fs.pack`` over ``Data.fs`` without an fsync; afterwards
    the packed file and its directory are fsynced here. That shortens, but
    cannot close, the window in which a power cut loses the packed file: the
    rename happens inside ZODB. Storages that are not a FileStorage in this
    process (ZEO: the server packs) are not fsynced, and ``fsynced`` says so.

    The time of the pack is then written, in its own short transaction, to a
    small record under ``MAINTENANCE_KEY`` in the packed database's root
    (FileStorage records no pack time); ``stats`` reports it.
    """
    if not (isinstance(days, int | float) and math.isfinite(days) and days >= 0):
        raise ConfigError("days", f"must be a number of days of at least 0, not {days!r}")
    name = database or (
        SESSIONS_DATABASE if SESSIONS_DATABASE in db.databases else db.database_name
    )
    target = db.databases.get(name)
    if target is None:
        raise ConfigError(
            "database", f"no database named {name!r}; this one has {sorted(db.databases)}"
        )
    storage = target.storage
    path = storage._file_name if isinstance(storage, FileStorage) else None
    size_before = int(target.getSize())
    pack_time = time.time() - days * 86400
    started = time.monotonic()
    target.pack(t=pack_time)
    duration = time.monotonic() - started
    fsynced = path is not None and _fsync_file_and_directory(path)
    return PackResult(
        database=name,
        storage_class=_class_name(storage),
        path=path,
        size_before=size_before,
        size_after=int(target.getSize()),
        duration=duration,
        pack_time=pack_time,
        fsynced=fsynced,
        recorded=_record_pack(target, pack_time),
    )


def _fsync_file_and_directory(path: str) -> bool:
    """Make the renamed packed file durable; False where directories can't be synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if os.name == "nt":  # no fsync of a directory on Windows
        return False
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _record_pack(target: DB, pack_time: float) -> bool:
    """Write the pack's time to the packed database; a failure only costs the record."""

    def write(conn: Connection) -> None:
        root = conn.root()
        record = root.get(MAINTENANCE_KEY)
        if record is None:
            record = root[MAINTENANCE_KEY] = PersistentMapping()
        record.update(last_pack=time.time(), last_pack_to=pack_time)

    try:
        with _connection(target) as conn:
            _in_transaction(conn, partial(write, conn), write=True)
    except Exception:
        log.warning("packed, but could not record the pack time", exc_info=True)
        return False
    return True


# -- verifying --------------------------------------------------------------------


def verify(db: DB) -> VerifyReport:
    """Check every database of *db* for damage, with ZODB's own checkers.

    For each database whose storage is a ``FileStorage`` in this process:

    - ``fstest``: ``ZODB.scripts.fstest.check`` reads the whole file and
      checks the structure of every transaction and data record;
    - ``references``: the logic of ``ZODB.scripts.fsrefs``, run on a second,
      read-only ``FileStorage`` of the same file (a read-only one takes no
      lock): every current object must load and every object it references
      must exist and load. Like fsrefs, it reads every current object twice.

    Other storages (ZEO, RelStorage, in-memory) get these two reported as
    skipped: run verify where the file is (on the ZEO server, with the server
    stopped or read-only). Wherever a session container is found in a root:

    - ``btrees``: ``BTrees.check.check`` and the C-level ``_check`` on its
      three trees and on every user's id set;
    - ``consistency``: the Length equals the number of sessions; every
      session is filed under its own id, has an expiry entry and is in its
      owner's user index; every user-index entry names a stored session
      owned by that user.

    The container checks read one consistent snapshot in a single read-only
    transaction (emptying the cache as they go) and keep a set of the ids in
    the expiry index: memory is about 100 bytes per session. To check a file
    suspected of damage, open it read-only: a writable FileStorage silently
    cuts a damaged tail off when it opens (keeping it in ``Data.fs.tr<n>``,
    which verify then reports as a note).
    """
    checks: list[Check] = []
    problems: list[str] = []
    notes: list[str] = []
    with _connection(db) as conn:
        for name, database in sorted(db.databases.items()):
            for check_name, outcome, found in _check_database(conn, name, database, notes):
                detail = "; ".join(found[:3]) + (" ..." if len(found) > 3 else "")
                checks.append(Check(name, check_name, outcome, detail))
                if outcome == "failed":
                    problems.extend(f"{name}: {check_name}: {problem}" for problem in found)
    return VerifyReport(tuple(checks), tuple(problems), tuple(notes))


_Outcome = tuple[str, Literal["passed", "failed", "skipped"], list[str]]


def _check_database(conn: Connection, name: str, database: DB, notes: list[str]) -> list[_Outcome]:
    storage = database.storage
    outcomes: list[_Outcome] = []
    if isinstance(storage, FileStorage):
        path = storage._file_name
        outcomes.append(_outcome("fstest", _capped(_guarded(_check_format, storage, path))))
        outcomes.append(_outcome("references", _capped(_guarded(_check_references, path))))
        notes.extend(
            f"{name}: {leftover} exists: FileStorage cut data off the end of the file when it "
            "was opened (an unfinished commit after a crash, or damage)"
            for leftover in sorted(glob.glob(glob.escape(path) + ".tr[0-9]*"))
        )
        if getattr(storage, "blob_dir", None):
            notes.append(f"{name}: blob files in {storage.blob_dir} were not checked")
    else:
        why = (
            f"{_class_name(storage)} is not a FileStorage in this process; ZODB's file "
            "checkers need the Data.fs itself (run verify where the file is)"
        )
        outcomes += [("fstest", "skipped", [why]), ("references", "skipped", [why])]

    def read() -> list[_Outcome]:
        container = _root_of(conn, name).get(ROOT_KEY)
        if container is None:
            none = ["no session container in this database"]
            return [("btrees", "skipped", none), ("consistency", "skipped", none)]
        btrees = _guarded(_check_btrees, container)
        conn.cacheMinimize()
        return [
            _outcome("btrees", _capped(btrees)),
            _outcome("consistency", _capped(_guarded(_check_consistency, conn, container))),
        ]

    outcomes += _in_transaction(conn, read, write=False)
    return outcomes


def _outcome(check: str, problems: list[str]) -> _Outcome:
    return (check, "failed" if problems else "passed", problems)


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return problems[:MAX_PROBLEMS] + [f"and {len(problems) - MAX_PROBLEMS} more"]


def _guarded(check: Callable[..., list[str]], *args: Any) -> list[str]:
    """Run a check; one that cannot finish is a failure, never a pass."""
    try:
        return check(*args)
    except TransientError:
        raise
    except Exception as exc:
        return [f"could not finish: {_describe(exc)}"]


def _describe(exc: BaseException) -> str:
    """Name an error, with its cause when it says nothing itself (StateLoadError)."""
    text = f"{type(exc).__name__}: {str(exc)[:200]}".rstrip(": ")
    if not str(exc) and exc.__cause__ is not None:
        text += f" ({_describe(exc.__cause__)})"
    return text


def _check_format(storage: FileStorage, path: str) -> list[str]:
    # A commit landing while fstest reads can look like a damaged tail; such
    # a failure is believed only if the storage did not grow meanwhile.
    for _ in range(3):
        size = storage.getSize()
        try:
            fstest.check(path)
            return []
        except fstest.FormatError as exc:
            error = str(exc)
            if storage.getSize() == size:
                break
    return [error]


def _check_references(path: str) -> list[str]:
    """fsrefs' two passes, returning what it would print, plus unloadable objects."""
    fs = FileStorage(path, read_only=True)
    try:
        # fsrefs itself walks this private index; by file position, as it
        # does, so that the file is read front to back.
        by_position = QQBTree()
        for oid, position in fs._index.iteritems():
            by_position[position] = int.from_bytes(oid, "big")
        undone: set[bytes] = set()
        unloadable: dict[bytes, str] = {}
        for oid in map(p64, by_position.values()):
            try:
                get_refs(load_current(fs, oid)[0])
            except POSKeyError:
                undone.add(oid)
            except Exception as exc:
                unloadable[oid] = _describe(exc)
        problems = [
            f"oid {oid_repr(oid)} cannot be loaded: {why}" for oid, why in unloadable.items()
        ]
        for oid in map(p64, by_position.values()):
            if oid in undone or oid in unloadable:
                continue
            data = load_current(fs, oid)[0]
            for ref, _klass in get_refs(data):
                if ref not in fs._index:
                    reason = "missing"
                elif ref in unloadable:
                    reason = "unloadable"
                elif ref in undone:
                    reason = "an object whose creation was undone"
                else:
                    continue
                module, klass = get_pickle_metadata(data)
                problems.append(
                    f"oid {oid_repr(oid)} ({module}.{klass}) refers to oid "
                    f"{oid_repr(ref)}, which is {reason}"
                )
        return problems
    finally:
        fs.close()


def _check_btrees(container: SessionContainer) -> list[str]:
    problems = []
    for name in ("sessions", "expiry", "by_user"):
        problems += _check_tree(name, getattr(container, name))
    return problems


def _check_tree(name: str, tree: Any) -> list[str]:
    try:
        tree._check()  # pointers between buckets
        BTrees.check.check(tree)  # key order and ranges within them
    except AssertionError as exc:
        return [f"{name} is a damaged BTree: {exc}"]
    return []


def _check_consistency(conn: Connection, container: SessionContainer) -> list[str]:
    problems: list[str] = []
    filed = {session_id for _slot, session_id in _chunked(conn, container.expiry, keys_only=True)}
    stored = 0
    for key, session in _chunked(conn, container.sessions):
        stored += 1
        if session.id != key:
            problems.append(f"session {key[:8]}... is stored under another id's key")
        if key not in filed:
            problems.append(f"session {key[:8]}... has no expiry entry: no sweep will remove it")
        owner_ids = container.by_user.get(session.user_id) if session.user_id is not None else ()
        if session.user_id is not None and (owner_ids is None or key not in owner_ids):
            problems.append(f"session {key[:8]}... is missing from {session.user_id!r}'s index")
    if container.count() != stored:
        problems.append(f"count() is {container.count()} but {stored} sessions are stored")
    for user_id, ids in _chunked(conn, container.by_user):
        problems += _check_tree(f"by_user[{user_id!r}]", ids)
        if not ids:
            problems.append(f"by_user[{user_id!r}] is empty and should have been removed")
        for session_id in ids:
            session = container.sessions.get(session_id)
            if session is None:
                problems.append(f"by_user[{user_id!r}] names {session_id[:8]}..., not stored")
            elif session.user_id != user_id:
                problems.append(
                    f"by_user[{user_id!r}] names {session_id[:8]}..., owned by {session.user_id!r}"
                )
    return problems


def _chunked(conn: Connection, tree: Any, *, keys_only: bool = False) -> Iterator[Any]:
    """Walk *tree* in one transaction, ghosting what was read after each chunk."""
    cursor = None
    while True:
        keys = _keys_after(tree, cursor, CHUNK_SIZE)
        for key in keys:
            yield key if keys_only else (key, tree[key])
        if len(keys) < CHUNK_SIZE:
            return
        cursor = keys[-1]
        conn.cacheMinimize()
