"""Which of the ASGI door's ZODB steps run on the event loop, and the guard that keeps them off I/O.

On a storage whose every lock is free of I/O waits (``loop_safe``), the
steps that only touch memory run inline, in the request's task: borrowing a
connection from the pool and beginning its transaction (a poll of what this
process committed, no round trip), loading a session *already in the
connection's cache*, a read's end (an abort with nothing joined) and
closing the connection. Anything else still takes a worker thread:

- a load of an object not in the cache (a file read, which on a stock
  ``FileStorage`` also waits for a writer's fsync): the storage refuses it
  on the loop (``LoadOnLoop`` while the session is looked up, which is then
  completed in a thread; ``StepInThread`` at the end);
- a commit with something to store (its fsync): ``LoopTransactionCore``
  stops a read's end where the commit would begin (``StepInThread``) and
  the front door ends the attempt, whole, in a thread; a commit that
  reaches the storage on the loop all the same is refused there
  (``guard_connection``), so it fails rather than fsyncs on the loop;
- a request whose scope has hooks (application code, which may do I/O).

Threading: ``steps_on_loop`` marks the calling thread (the loop's) for the
length of one synchronous block; worker threads are never marked, so the
same guarded connection loads and commits normally there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import transaction
from transaction.interfaces import NoTransaction
from ZODB import DB
from ZODB.DemoStorage import DemoStorage
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage
from ZODB.POSException import ReadConflictError
from ZODB.utils import oid_repr

from zodbsession.core.commit import anything_joined, nothing_joined
from zodbsession.core.groupcommit import GroupCommitFileStorage
from zodbsession.core.request_session import RequestSession
from zodbsession.core.transact import TransactionCore


class LoadOnLoop(ReadConflictError):  # type: ignore[misc]  # ZODB is untyped
    """A storage load refused on the event loop: the step that needed it goes to a worker thread.

    A ``ConflictError`` so that ZODB's ``Connection.setstate`` passes it on
    without logging a failure; the front door catches it around the steps
    it runs inline and never lets it end a request.
    """


class StepInThread(BaseException):  # noqa: N818 (a signal, not an error)
    """An attempt's end begun on the loop needs I/O (a commit, a load): it runs again, whole, in a thread.

    A ``BaseException`` so that ``TransactionCore.finish`` and ``fail`` (which
    turn every ``Exception`` into an ending) let it through before anything
    is stored or aborted: the transaction is intact for the thread.
    """


_marked = threading.local()


def on_loop() -> type[BaseException] | None:
    """Inside ``steps_on_loop``, the exception a refused load raises; None elsewhere."""
    return getattr(_marked, "refusal", None)


@contextlib.contextmanager
def steps_on_loop(refusal: type[BaseException] = StepInThread) -> Iterator[None]:
    """Mark the calling thread for the block: guarded storages refuse loads (*refusal*) and commits."""
    _marked.refusal = refusal
    try:
        yield
    finally:
        _marked.refusal = None


def loop_safe(storage: Any) -> bool:
    """Whether *storage*'s begin, abort and close never wait on I/O (then steps may run on the loop).

    - ``MappingStorage``: memory only.
    - ``GroupCommitFileStorage`` (what ``file://`` opens): its lock is held
      for writes into the page cache and index updates, never across the
      fsync (taken outside it by the group's leader).
    - ``DemoStorage``: commits go to its ``changes``, which must be loop-safe;
      its base is only read (loads always go to a thread), so a stock
      ``FileStorage`` base is fine.
    - a stock ``FileStorage`` is not: it fsyncs inside the lock that every
      begin takes (``lastTransaction``), so a read's begin would wait for
      another request's fsync.
    - ZEO, RelStorage and anything else: not (a begin is a round trip).
    """
    if isinstance(storage, GroupCommitFileStorage):
        return True
    if isinstance(storage, MappingStorage):
        return True
    if isinstance(storage, DemoStorage):
        base = storage.base
        return loop_safe(storage.changes) and (loop_safe(base) or isinstance(base, FileStorage))
    return False


def database_loop_safe(db: DB) -> bool:
    """Whether every database of *db*'s multi-database has a ``loop_safe`` storage."""
    return all(loop_safe(member.storage) for member in db.databases.values())


def guard_connection(connection: Any) -> None:
    """Make *connection*'s storage refuse loads (``LoadOnLoop``) and commits inside ``steps_on_loop``.

    Installed once per pooled connection, on its own storage instance (ZODB's
    per-connection MVCC adapter), so threads and other connections are not
    touched. Outside ``steps_on_loop`` it costs one flag test per load.
    """
    instance = connection._storage
    if getattr(instance, "_zodbsession_loop_guard", False):
        return
    load: Callable[[bytes], Any] = instance.load
    tpc_begin: Callable[[Any], Any] = instance.tpc_begin

    def guarded_load(oid: bytes) -> Any:
        refusal = on_loop()
        if refusal is not None:
            raise refusal(f"a load of {oid_repr(oid)} on the event loop")
        return load(oid)

    def guarded_tpc_begin(txn: Any) -> Any:
        if on_loop() is not None:
            raise RuntimeError("a commit reached the storage on the event loop; zodbsession's ASGI "
                               "door commits in a worker thread (a bug: please report it)")
        return tpc_begin(txn)

    instance.load = guarded_load
    instance.tpc_begin = guarded_tpc_begin
    instance._zodbsession_loop_guard = True


def guard_connections(connection: Any, sessions_database: str | None) -> None:
    """Guard *connection* and every connection of its multi-database opened now.

    The sessions database's connection (*sessions_database*, when the
    sessions live apart) is opened first: resolving the session opens it anyway.
    """
    if sessions_database is not None:
        connection.get_connection(sessions_database)
    for member in connection.connections.values():
        guard_connection(member)


def resolve_on_loop(session: RequestSession) -> bool:
    """Load the cookie's session inline if it is cached; False if a load is needed (do it in a thread).

    A refused load leaves the session unresolved (the lookup sets nothing
    before its loads; a touched access time is set again by the retry in
    the thread, to the same value), so ``_resolve`` in a thread completes it.
    """
    with steps_on_loop(LoadOnLoop):
        try:
            session._resolve()
        except LoadOnLoop:
            return False
    return True


class LoopTransactionCore(TransactionCore):
    """``TransactionCore`` whose read ends may run on the loop: a commit with work to do stops first.

    Inside ``steps_on_loop``, where ``finish`` would commit a transaction
    something joined, it raises ``StepInThread`` instead, before anything
    is stored: the veto has passed, the session has settled (marking an
    in-place change, so a second ``settle`` finds nothing more), and the
    transaction is intact for ``finish`` to run again in a worker thread.
    Elsewhere it is ``TransactionCore`` unchanged.
    """

    def _commit(self, tm: transaction.TransactionManager, session: RequestSession) -> float | None:
        if on_loop() is not None and not nothing_joined(tm.get()):
            raise StepInThread("a commit on the event loop")
        return super()._commit(tm, session)


def scope_has_hooks(attempt: Any) -> bool:
    """Whether the attempt's scope holds hooks (the application's code: they run in a thread)."""
    scope = attempt.scope
    return scope is not None and any(scope.hooks.values())


def writes_pending(attempt: Any) -> bool:
    """Whether something joined the attempt's transaction already (a write): its end goes to a thread.

    Memory only. False says nothing of what ``finish`` may still find (an
    in-place change): ``LoopTransactionCore`` stops that one at the commit.
    """
    tm = attempt.tm
    if tm is None:
        return False
    try:
        return anything_joined(tm.get())
    except NoTransaction:
        return False
