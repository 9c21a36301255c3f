"""``verify``: check a session database for damage, with ZODB's own checkers.

File-level checks (``fstest``, fsrefs' references walk) where the storage is a
FileStorage in this process, and BTree and index-consistency checks of the
session container wherever one is found. Reports what it finds; repairs nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import BTrees.check
from BTrees.QQBTree import QQBTree
from transaction.interfaces import TransientError
from ZODB import DB
from ZODB.Connection import Connection
from ZODB.FileStorage import FileStorage
from ZODB.POSException import POSKeyError
from ZODB.scripts import fstest
from ZODB.serialize import get_refs
from ZODB.utils import get_pickle_metadata, load_current, oid_repr, p64

from zodbsession.core.store import ROOT_KEY, SessionContainer
from zodbsession.core.truncation import copies as truncation_copies
from zodbsession.core.work import CHUNK_SIZE, class_name, connection, in_transaction, keys_after, root_of

__all__ = ["Check", "VerifyReport", "verify"]

#: Problems listed per check before the rest are only counted.
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Check:
    """The outcome of one check on one database."""

    database: str
    name: str
    outcome: Literal["passed", "failed", "skipped"]
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class VerifyReport:
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
        """The fields and ``sound`` as plain JSON-ready values."""
        return {**dataclasses.asdict(self), "sound": self.sound}


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
    with connection(db) as conn:
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
            f"{name}: {leftover} ({os.path.getsize(leftover)} bytes): FileStorage cut them off "
            "the end of the file when it was opened (an unfinished commit after a crash, or "
            "damage); kept for inspection, the newest few only"
            for leftover in truncation_copies(path) if os.path.exists(leftover)
        )
        if getattr(storage, "blob_dir", None):
            notes.append(f"{name}: blob files in {storage.blob_dir} were not checked")
    else:
        why = _why_no_file_checks(storage)
        outcomes += [("fstest", "skipped", [why]), ("references", "skipped", [why])]

    def read() -> list[_Outcome]:
        container = root_of(conn, name).get(ROOT_KEY)
        if container is None:
            none = ["no session container in this database"]
            return [("btrees", "skipped", none), ("consistency", "skipped", none)]
        btrees = _guarded(_check_btrees, container)
        conn.cacheMinimize()
        return [
            _outcome("btrees", _capped(btrees)),
            _outcome("consistency", _capped(_guarded(_check_consistency, conn, container))),
        ]

    outcomes += in_transaction(conn, read, write=False)
    return outcomes


def _why_no_file_checks(storage: Any) -> str:
    """Why ZODB's file checkers do not apply to *storage*, and where they would, said for its kind."""
    name = class_name(storage)
    if hasattr(storage, "_adapter"):  # RelStorage: rows in a relational database, no file
        return (f"{name} keeps its objects in a relational database, not in a FileStorage file: "
                "ZODB's file checkers do not apply (check that database with its own tools)")
    if "ClientStorage" in name:
        return (f"{name} is a ZEO client: the FileStorage is the ZEO server's; run verify there "
                "(on the server's file, the server stopped, or on a copy)")
    return f"{name} is not a FileStorage: there is no file for ZODB's file checkers to read"


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
        keys = keys_after(tree, cursor, CHUNK_SIZE)
        for key in keys:
            yield key if keys_only else (key, tree[key])
        if len(keys) < CHUNK_SIZE:
            return
        cursor = keys[-1]
        conn.cacheMinimize()
