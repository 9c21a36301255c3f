"""Maintenance of a session database: expire, pack, inspect and revoke.

The Python API behind the ``zodbsession`` maintenance commands. Every function
takes an open ``ZODB.DB`` and is safe on a live database shared with running
servers (through ZEO): it works on a connection of its own, in short
transactions retried on conflicts, never keeps a transaction open across a
long loop (see ``zodbsession.core.work``). Interrupting a batched function (Ctrl-C)
aborts the current batch and keeps the committed ones, so the database stays
consistent. ``verify`` lives in ``zodbsession.ops.verify`` and is re-exported here.

The module is a little over the house's ~400 lines because it is the one
surface the CLI wraps; ``pack`` (a storage's concern, not the sessions') is the
part to move out next.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import reprlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any

from persistent.mapping import PersistentMapping
from ZODB import DB
from ZODB.Connection import Connection
from ZODB.FileStorage import FileStorage

from zodbsession.core.db import SESSIONS_DATABASE
from zodbsession.core.errors import ConfigError, SessionNotFound
from zodbsession.core.manager import SessionManager
from zodbsession.core.retry import RetryPolicy
from zodbsession.core.session import Session, ids_equal, is_well_formed_id
from zodbsession.core.store import SessionContainer, expiry_slot
from zodbsession.core.work import (
    CHUNK_SIZE,
    class_name,
    connection,
    in_transaction,
    keys_after,
    root_of,
    run_batches,
)
from zodbsession.ops.verify import Check, VerifyReport, verify

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
    "last_packs",
    "list_sessions",
    "pack",
    "revoke",
    "revoke_all",
    "revoke_user",
    "sessions_by_prefix",
    "show_session",
    "stats",
    "verify",
]

log = logging.getLogger(__name__)

#: Called with the number of items done so far, after each committed batch.
ProgressCallback = Callable[[int], None]

#: The root key of the small record ``pack`` leaves in the packed database,
#: because FileStorage keeps no trace of when it was last packed:
#: ``{"last_pack": <time it ran>, "last_pack_to": <the pack time>}``.
MAINTENANCE_KEY = "zodbsession.ops.maintenance"

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
    size_note: str = ""  # why the sizes are not what the pack freed (a relational database's own figure)


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
    with connection(db) as conn:
        return manager.expire(conn, batch_size=batch_size, progress=progress)


def revoke(db: DB, manager: SessionManager, session_id: str) -> bool:
    """End one session now; returns whether there was one.

    A malformed id finds nothing and costs no lookup.
    """
    if not is_well_formed_id(session_id):
        return False
    with connection(db) as conn:
        return in_transaction(conn, lambda: manager.revoke(conn, session_id), write=True)


def revoke_user(db: DB, manager: SessionManager, user_id: str, *, batch_size: int = 500) -> int:
    """End every session of one user ("log out everywhere"); returns how many.

    Works in batches of *batch_size*, so even a user with a huge number of
    sessions (a runaway client) holds up requests for one small commit only.
    """
    return _revoke_batches(db, manager, lambda c: c.by_user.get(user_id), batch_size, None)


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
    return _revoke_batches(db, manager, lambda c: c.sessions, batch_size, progress)


def _revoke_batches(
    db: DB,
    manager: SessionManager,
    ids_of: Callable[[SessionContainer], Any],
    batch_size: int,
    progress: ProgressCallback | None,
) -> int:
    """Revoke the ids in ``ids_of(container)``, *batch_size* per transaction."""
    _positive("batch_size", batch_size)

    def step(conn: Connection, cursor: str | None) -> tuple[int, str | None, bool]:
        container = manager.container(conn, create=False)
        ids = ids_of(container) if container is not None else None
        if ids is None:
            return 0, cursor, True
        batch = keys_after(ids, cursor, batch_size)  # a list: the tree changes below
        revoked = sum(manager.revoke(conn, session_id) for session_id in batch)
        return revoked, (batch[-1] if batch else cursor), len(batch) < batch_size

    with connection(db) as conn:
        return run_batches(conn, partial(step, conn), progress)


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
        with connection(db) as conn:
            read = partial(_read_infos, conn, manager, user, cursor, now)
            infos, cursor, finished = in_transaction(conn, read, write=False)
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
    keys = keys_after(ids, cursor, CHUNK_SIZE)
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

    with connection(db) as conn:
        detail = in_transaction(conn, partial(read, conn), write=False)
    if detail is None:
        raise SessionNotFound(f"no stored session has the id {session_id[:8]}...")
    return detail


def sessions_by_prefix(db: DB, manager: SessionManager, prefix: str, limit: int, *,
                       retry: RetryPolicy | None = None) -> list[SessionInfo]:
    """The bookkeeping of up to *limit* stored sessions whose id starts with *prefix*.

    A range read of the id tree in one short read-only transaction: it costs
    *limit* sessions whatever the database holds, and never reads their data.
    Expired sessions not yet swept are included (``live`` says which).
    *retry* replaces the default retry policy (the admin's is brief).
    """
    now = manager.clock()

    def read(conn: Connection) -> list[SessionInfo]:
        container = manager.container(conn, create=False)
        infos: list[SessionInfo] = []
        if container is None:
            return infos
        for key in container.sessions.keys(min=prefix):
            if len(infos) >= limit or not key.startswith(prefix):
                break
            infos.append(SessionInfo.of(container.sessions[key], manager, now))
        return infos

    with connection(db) as conn:
        return in_transaction(conn, partial(read, conn), write=False, name="admin", retry=retry)


def last_packs(db: DB, *, retry: RetryPolicy | None = None) -> dict[str, float | None]:
    """When ``pack`` last packed each database (None: never), in one small read.

    ``stats`` has the same figure but also walks the expiry and user
    indexes, too much for every admin page view.
    """

    def read(conn: Connection) -> dict[str, float | None]:
        return {name: _last_pack(conn, name) for name in sorted(db.databases)}

    with connection(db) as conn:
        return in_transaction(conn, partial(read, conn), write=False, name="admin", retry=retry)


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
    with connection(db) as conn:
        stored = in_transaction(conn, partial(_stored, conn, manager), write=False)
        expired = _count_expired(conn, manager, now)
        users = _count_users(conn, manager)
        last_packs = {name: in_transaction(conn, partial(_last_pack, conn, name), write=False)
                      for name in db.databases}
        # Counted once this command's own reads are out of the cache: the
        # connection it borrowed is a pooled one, whose warm cache the walks
        # above emptied; counted before them, each run reported a figure the
        # run itself then changed, and two runs a second apart disagreed.
        for name in db.databases:
            conn.get_connection(name).cacheMinimize()
        cached = {name: database.cacheSize() for name, database in db.databases.items()}
        databases = tuple(
            DatabaseStats(
                name=name,
                storage_class=class_name(database.storage),
                storage_name=str(database.storage.getName()),
                size_bytes=int(database.getSize()),
                last_pack=last_packs[name],
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
        entries = keys_after(container.expiry, cursor, CHUNK_SIZE, max=upper, excludemax=True)
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

    return run_batches(conn, step, write=False)


def _count_users(conn: Connection, manager: SessionManager) -> int:
    def step(cursor: Any) -> tuple[int, Any, bool]:
        container = manager.container(conn, create=False)
        if container is None:
            return 0, cursor, True
        keys = keys_after(container.by_user, cursor, CHUNK_SIZE)
        conn.cacheMinimize()
        return len(keys), (keys[-1] if keys else cursor), len(keys) < CHUNK_SIZE

    return run_batches(conn, step, write=False)


def _last_pack(conn: Connection, name: str) -> float | None:
    record = root_of(conn, name).get(MAINTENANCE_KEY)
    return record.get("last_pack") if record is not None else None


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
        storage_class=class_name(storage),
        path=path,
        size_before=size_before,
        size_after=int(target.getSize()),
        duration=duration,
        pack_time=pack_time,
        fsynced=fsynced,
        recorded=_record_pack(target, pack_time),
        size_note=_size_note(storage),
    )


#: What a RelStorage database's size says after a pack, by the module of its adapter.
_RELATIONAL_SIZES = {
    "postgresql": "as PostgreSQL counts it: the rows the pack removed are freed for reuse at its "
                  "next VACUUM (autovacuum does it), and the size drops only after VACUUM FULL",
    "mysql": "as MySQL counts it: InnoDB reuses the space of the removed rows; the size drops "
             "only after OPTIMIZE TABLE",
    "sqlite": "as SQLite counts it: the pages of the removed rows are reused; the file shrinks "
              "only after VACUUM",
    "oracle": "as Oracle counts it: the space of the removed rows is reused; it is given back "
              "only after a segment shrink",
}


def _size_note(storage: Any) -> str:
    """Why a relational database's size does not show what the pack removed; "" for the others."""
    adapter = getattr(storage, "_adapter", None)
    module = type(adapter).__module__ if adapter is not None else ""
    for name, note in _RELATIONAL_SIZES.items():
        if f".{name}." in module:
            return note
    return ""


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
        with connection(target) as conn:
            in_transaction(conn, partial(write, conn), write=True)
    except Exception:
        log.warning("packed, but could not record the pack time", exc_info=True)
        return False
    return True
