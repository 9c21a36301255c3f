"""The request-transaction core: a request's attempts at one ZODB transaction, for any front door.

``TransactionCore`` owns, once, what the WSGI publisher and the ASGI middleware
share: borrowing a connection from the pool with an explicit transaction
manager of its own (reused once a request is done with it), the registry
scope, one attempt's end (the commit veto, the per-transaction hooks, the
session's settling and checks, the commit with its vote witness), the outcome
of every failure by the table in ``outcomes``, the retry policy's verdict and
pause, and the report to the manager's observers. It knows nothing of HTTP
framing, cookies' syntax or bodies: a front door turns an ``Ending`` into its
protocol's answer.

One request, as a front door drives it: ``attempts_for`` and the policy's
``start()``; then per attempt ``attempt`` (no I/O), ``open``, ``enter``, the
application, ``finish`` (or ``fail`` if it raised), ``leave``, ``close``;
retry while ``Ending.retry``, pausing ``Ending.delay`` (the policy's count and
deadline decide when an ending stops asking); and ``report`` once at the end. ``drive`` is that
loop for threads; docs/core.md shows it for asyncio, and
tests/core/test_transact.py runs it.

The ZODB steps (``open``, ``finish``, ``fail``, ``close``) block on the
storage and may run in a worker thread (``asyncio.to_thread``), each as one
call; ``enter`` and ``leave`` set the registry's scope in the caller's context,
so call them where the application runs (the event loop's task), before the
threaded steps: ``to_thread`` copies that context, so the hooks and
``current_session`` work in them too.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from threading import get_ident
from typing import Any

import transaction
from transaction.interfaces import AlreadyInTransaction, NoTransaction, TransientError
from ZODB import DB
from ZODB.Connection import Connection

from zodbsession.core.attempt import UNUSED, Attempt, Ending, Headers, SessionUse
from zodbsession.core.commit import (
    abort_quietly,
    at_rest,
    close_when_transaction_ends,
    commit,
    in_transaction,
    nothing_joined,
)
from zodbsession.core.errors import StorageUnavailable
from zodbsession.core.freshness import cookieless_begin_may_skip_round_trip
from zodbsession.core.manager import SessionManager
from zodbsession.core.outcomes import (
    CLIENT_GONE,
    COMMITTED,
    PUBLISH_ERROR,
    VETOED,
    Outcome,
    classify,
)
from zodbsession.core.registry import Scope, SessionRegistry
from zodbsession.core.registry import registry as default_registry
from zodbsession.core.request_session import RequestSession
from zodbsession.core.retry import DEFAULT_POLICY, RetryPolicy

log = logging.getLogger(__name__)

#: ``commit_veto(request, status, headers) -> True`` to abort instead of commit; *request*
#: is what the front door gave ``attempt()`` (the WSGI environ, the ASGI scope).
CommitVeto = Callable[[Any, str, Headers], bool]

#: Idle transaction managers a core keeps for reuse (about one per server thread).
IDLE_MANAGERS = 32


#: ``Attempt.keep``: never keep its connection; keep again the connection its
#: thread kept; keep a connection new to its thread only if there is room.
NEVER_KEEP, KEEP_AGAIN, KEEP_IF_ROOM = 0, 1, 2

#: What ``session_use`` says of a request that read its session and sends no cookie (a read).
USED = SessionUse(used=True)


class RequestTransactionManager(transaction.TransactionManager):  # type: ignore[misc]  # transaction is untyped
    """The explicit transaction manager a request's connection is opened with.

    One difference from ``transaction.TransactionManager(explicit=True)``:
    ``abort()`` with no transaction begun does nothing instead of raising
    ``NoTransaction``. Aborting nothing is nothing; and ``DB.close()`` aborts
    the manager of every connection that is not in the pool, which a
    connection kept for its thread (``TransactionCore``) is, between two
    requests, with no transaction begun.
    """

    _txn: Any  # transaction's own attribute (the current transaction or None), typed for mypy

    def __init__(self) -> None:
        super().__init__(explicit=True)

    def begin(self, sync: bool = True) -> Any:
        """Begin a transaction; with *sync* false the connections ask their storage for no news.

        ``begin()`` calls each connection's ``newTransaction(txn)``, which asks
        the storage to sync (ZEO with ``server_sync``: a round trip) before
        polling its invalidations; ``begin(sync=False)`` passes ``False``, as
        ZODB itself does after a commit, and the connections still apply every
        invalidation this process has received.
        """
        if sync:
            return super().begin()
        if self._txn is not None:
            raise AlreadyInTransaction()
        txn = self._txn = transaction.Transaction(self._synchs, self)
        self._synchs.map(lambda synch: synch.newTransaction(txn, False) if isinstance(synch, Connection)
                         else synch.newTransaction(txn))
        return txn

    def abort(self) -> None:
        """Abort the current transaction; with none begun, do nothing."""
        if self._txn is not None:
            super().abort()


def default_commit_veto(request: Any, status: str, headers: Headers) -> bool:
    """Abort on a 5xx answer; commit everything else, 4xx and redirects included."""
    return status.startswith("5")


class TransactionCore:
    """The request-transaction core one front door (or several) drives.

    Threading: one core serves every thread and task of a server; the idle
    transaction managers are a list whose ``append`` and ``pop`` are atomic.
    A manager given to an attempt goes to a later one once ``close`` has
    returned it clean (no transaction, no synchronizer): register data
    managers with it per request, never keep it.

    With *keep_connections* (the WSGI publisher's choice: each request runs
    in one server thread from ``open`` to ``close``) a connection whose
    attempt ended cleanly (committed, or a read's empty transaction aborted)
    is kept for the next request of the same thread, with its manager,
    instead of going back to the pool: that skips the pool's bookkeeping
    (``DB.open``/``Connection.close``, about 50 calls). It is as safe as the
    pool: the next ``open`` still begins a transaction, and beginning calls
    the connection's ``newTransaction``, which syncs with the storage and
    applies every invalidation received meanwhile (a pooled connection gets
    the same); a kept connection is one with no transaction and nothing
    joined, exactly what the pool holds. Never kept: an attempt that failed,
    was abandoned or vetoed, a streamed response, a connection with
    ``onCloseCallback``s; those are closed. ``DB.close()`` releases kept
    connections as it does pooled ones (``RequestTransactionManager``),
    ``release_kept`` gives them back to the pool, and so does a core that is
    dropped (a finalizer). A kept connection counts as
    in use in ``DB.connectionDebugInfo()`` (so in the pool gauges): at most
    one per server thread alive (those kept for threads that ended go back
    to the pool when a new thread opens one), and at most the pool's size
    less one, so that the janitor, the metrics and any thread beyond them
    still find a connection in the pool and ZODB's "more open connections
    than pool_size" warning comes no sooner than without keeping.
    """

    def __init__(
        self,
        db: DB,
        *,
        manager: SessionManager,
        retry: RetryPolicy = DEFAULT_POLICY,
        commit_veto: CommitVeto = default_commit_veto,
        registry: SessionRegistry = default_registry,
        idle_managers: int = IDLE_MANAGERS,
        keep_connections: bool = False,
    ) -> None:
        self.db = db
        self.manager = manager
        self.retry = retry
        self.commit_veto = commit_veto
        self.registry = registry
        self.max_idle_managers = idle_managers
        # Explicit transaction managers no request holds, for reuse: making
        # one per request is a measurable part of a read's cost.
        self.idle_managers: list[transaction.TransactionManager] = []
        self.keep_connections = keep_connections
        # A request naming no session begins without ZEO's round trip (freshness' docstring).
        self.cookieless_skips_round_trip = cookieless_begin_may_skip_round_trip(db)
        # {thread id: (connection, its manager)}: the connection each thread
        # keeps between its requests; dict pop and setdefault are atomic.
        self._kept: dict[int, tuple[Any, transaction.TransactionManager]] = {}
        self._keeping = threading.Lock()  # the check and the insert of _keep_if_room, together
        if keep_connections:
            # A core dropped without release_kept() still gives its kept
            # connections back (their storage instances are released with them).
            weakref.finalize(self, _release_kept, self._kept, None)

    # -- making an attempt (no I/O) ------------------------------------------

    def attempts_for(self, *, replayable: bool) -> int:
        """The limit on a request's attempts: the policy's (0: its deadline only), 1 if not replayable."""
        return self.retry.attempts if replayable else 1

    def attempt(self, cookie_id: str | None, *, number: int = 1, attempts: int = 1, where: str = "",
                request: Any = None, more_ids: tuple[str, ...] = (),
                started: float | None = None) -> Attempt:
        """A new, unopened attempt; *where* names the request in logs (``"GET /path"``).

        *cookie_id* must already be well formed (``is_well_formed_id``) or None;
        so must *more_ids*, the request's further cookies of the same name
        (``cookies.session_cookie_ids``), looked up when the first names no live session.
        *started* is ``retry.start()`` taken before the first attempt, the
        same for every attempt of the request: the retry deadline counts
        from it. The first attempt may leave it out (now); a later one must not.
        """
        if started is None:
            if number > 1:
                raise ValueError("a retried attempt needs started=, the retry policy's start() "
                                 "taken before the request's first attempt")
            started = self.retry.start()
        return Attempt(cookie_id, number, attempts, where, request if request is not None else {},
                       more_ids, started)

    # -- the ZODB steps (blocking: a worker thread under asyncio) ------------

    def open(self, attempt: Attempt, *, preload: bool = False) -> None:
        """Borrow a connection with a manager of its own and begin the attempt's transaction.

        Makes ``attempt.session`` and ``attempt.scope`` (not yet current:
        ``enter``). With *preload* the session the cookie names is loaded
        now, so that an application on an event loop reads it from memory.
        A storage that cannot be reached raises ``StorageUnavailable`` (or
        ZEO's ``ClientDisconnected``); ``fail`` answers either.
        """
        kept = self._kept.pop(get_ident(), None) if self._kept else None
        if kept is not None and kept[0].transaction_manager is kept[1]:
            connection, tm = kept
            attempt.keep = KEEP_AGAIN
        else:
            # (A kept connection whose manager is gone was released by DB.close().)
            if self._kept:
                self._release_ended_threads()
            attempt.keep = KEEP_IF_ROOM if self.keep_connections else NEVER_KEEP
            tm = self._take_manager()
            try:
                connection = self.db.open(transaction_manager=tm)
            except TransientError:
                raise
            except Exception as exc:
                # Opening polls the storage (RelStorage asks its SQL server): a
                # failure here is the storage's, not the application's.
                raise StorageUnavailable(f"the storage cannot be reached: {exc}") from exc
        attempt.tm = tm
        try:
            # A retried attempt (after a conflict: its snapshot was behind) always syncs.
            tm.begin(attempt.cookie_id is not None or attempt.number > 1
                     or not self.cookieless_skips_round_trip)
        except BaseException as exc:
            # ZEO fault handling: with server_sync, begin() asks the server for
            # news and raises ClientDisconnected when it is away; the
            # connection must still go back to the pool.
            with contextlib.suppress(Exception):  # NoTransaction, or the same outage
                tm.abort()
            connection.close()
            if isinstance(exc, Exception) and not isinstance(exc, TransientError):
                raise StorageUnavailable(f"the storage cannot be reached: {exc}") from exc
            raise
        self._make_scope(attempt, connection)
        if preload and attempt.cookie_id is not None:
            attempt.opened_session._resolve()

    def join(self, attempt: Attempt) -> None:
        """Open the attempt on the thread's default transaction manager, which another owns.

        For stacks where an outer manager (pyramid_tm) ends the transaction:
        never ``finish`` or ``fail`` a joined attempt; ``close`` gives the
        connection back when that transaction ends, and the scope's hooks
        go to the outer transaction's own lists.
        """
        attempt.joined = True
        self._make_scope(attempt, self.db.open(transaction_manager=transaction.manager))
        scope = attempt.opened_scope
        scope.outer = True
        settle = getattr(attempt.session, "settle", None)
        if settle is not None:
            scope.before_commit(settle)

    def finish(self, attempt: Attempt, status: str, headers: Headers, *,
               raised: BaseException | None = None) -> Ending:
        """End the attempt by its answer: the veto aborts, else it commits. Never raises an ``Exception``.

        *raised* is the ``PublishError`` the answer came from, if any (it
        commits too). On the way to the commit: the ``before_commit`` hooks,
        the session's ``settle()``, a read's empty transaction aborted rather
        than committed, the written session checked (picklable, within
        ``max_session_bytes``). A failure on the way is ``fail``'s.
        """
        try:
            tm, scope, session = attempt.tm, attempt.scope, attempt.session
            if tm is None or scope is None or session is None:
                raise RuntimeError("the attempt is not open: finish() needs open() first")
            if self.commit_veto(attempt.request, status, headers):
                tm.abort()
                ending = Ending(VETOED, attempts=attempt.number)
                self._log(ending, attempt, status=status)
                self._run_hooks(attempt, "after_abort")
                return ending
            ending = Ending(PUBLISH_ERROR if raised is not None else COMMITTED, raised,
                            attempts=attempt.number)
            hooks = scope.hooks
            for fn, args, kwargs in hooks["before_commit"]:
                fn(*args, **kwargs)
            settle = getattr(session, "settle", None)
            if settle is not None:
                settle()
            ending.session_use = self.session_use(attempt)
            ending.commit_seconds = self._commit(tm, session)
        except Exception as exc:
            return self.fail(attempt, exc)
        # Ended as planned: the connection may be kept for the thread's next request.
        attempt.clean = True
        if hooks["after_commit"]:
            self._run_hooks(attempt, "after_commit")
        return ending

    def session_use(self, attempt: Attempt) -> SessionUse:
        """What happened to the attempt's session: the cookie it must send, and whether it was used.

        ``finish`` asks this before committing; a joined attempt's front door
        asks it itself, once the application has returned.
        """
        session = attempt.opened_session if attempt.session is None else attempt.session
        cookie = session.cookie_to_send()
        if cookie is None:  # the common case: one of two shared answers
            return USED if session.used else UNUSED
        max_age = None
        if isinstance(cookie, str):
            cookie_max_age = getattr(session, "cookie_max_age", None)
            max_age = cookie_max_age() if cookie_max_age is not None else None
        return SessionUse(cookie, max_age, used=session.used)

    def fail(self, attempt: Attempt, error: BaseException) -> Ending:
        """End the attempt that raised *error*: its row, the abort, the log, the hooks. Never raises.

        The retry policy is asked before the abort (which forgets the data
        managers that joined). For a retry, ``Ending.delay`` is the pause
        before the next attempt, and the observers hear ``request_retried``;
        otherwise the ``after_abort`` hooks run when the transaction aborted.
        An unopened attempt (a refusal before any transaction) just gets its row.
        """
        txn = self._transaction(attempt)
        retryable = self.retry.retryable(error, txn)
        last, delay = True, 0.0
        if retryable and not attempt.last:
            # The pause is drawn first: the deadline is about when the next attempt would begin.
            delay = self.retry.delay(attempt.number)
            last = not self.retry.allows(attempt.number, attempt.started, delay)
        row = classify(error, retryable=retryable, last=last)
        if txn is not None:
            abort_quietly(attempt.tm)
        ending = Ending(row, error, attempts=attempt.number)
        if row.retry:
            ending.delay = delay
        self._log(ending, attempt)
        if row.retry:
            self.manager.observers.request_retried(error, attempt.number)
        elif txn is not None and row.fate != "unknown":
            self._run_hooks(attempt, "after_abort")
        return ending

    def abandon(self, attempt: Attempt, outcome: Outcome = CLIENT_GONE) -> Ending:
        """End the attempt by a row the front door decided (a client gone mid-body): abort, log, hooks.

        ZODB I/O (the abort): a worker thread under asyncio. The
        ``after_abort`` hooks run, as for any final abort.
        """
        if self._transaction(attempt) is not None:
            abort_quietly(attempt.tm)
        ending = Ending(outcome, attempts=attempt.number)
        self._log(ending, attempt)
        if outcome.fate == "abort":
            self._run_hooks(attempt, "after_abort")
        return ending

    def refuse(self, error: BaseException, *, where: str = "", request: Any = None) -> Ending:
        """The ending of a request refused before any attempt (a full session queue, a huge body)."""
        return self.fail(self.attempt(None, where=where, request=request), error)

    def close(self, attempt: Attempt) -> None:
        """Give the connection back to the pool and the manager back to the idle list.

        Whatever is uncommitted is aborted first (a streamed body's changes).
        A joined attempt's connection goes back when the outer transaction
        ends. Safe on an attempt that never opened, and only once per attempt.
        """
        connection, attempt.connection = attempt.connection, None
        if attempt.joined:
            if connection is not None:
                close_when_transaction_ends(connection)
            return
        tm, attempt.tm = attempt.tm, None
        if connection is not None and tm is not None:
            if attempt.clean and attempt.keep and at_rest(connection, tm) and (
                    self._kept.setdefault(get_ident(), (connection, tm))[0] is connection
                    if attempt.keep == KEEP_AGAIN else self._keep_if_room(connection, tm)):
                return  # kept for this thread's next request
            if in_transaction(tm):
                abort_quietly(tm)
        if connection is not None:
            connection.close()
        if tm is not None:
            self._give_back(tm)

    def _keep_if_room(self, connection: Any, tm: transaction.TransactionManager) -> bool:
        """Keep a connection newly opened for this thread if fewer than the pool's size less one are kept."""
        with self._keeping:
            if len(self._kept) >= self.db.pool.size - 1:
                return False
            return self._kept.setdefault(get_ident(), (connection, tm))[0] is connection

    def _release_ended_threads(self) -> None:
        """Give back the connections kept for threads that ended, when there are as many kept as threads.

        A server that starts a thread per request (``wsgiref`` with
        ``ThreadingMixIn``, werkzeug's development server) would otherwise
        leave one kept for every thread that ended (Linux mostly reuses
        their ids, but nothing promises it). Asked only when a thread finds
        nothing kept for it and opens a connection from the pool.
        """
        kept = self._kept
        if len(kept) >= threading.active_count():
            alive = {thread.ident for thread in threading.enumerate()}
            _release_kept(kept, self._give_back, only=[i for i in list(kept) if i not in alive])

    def release_kept(self) -> int:
        """Give every connection kept for a thread back to the pool (at shutdown); how many there were.

        Safe while requests run: a connection is either kept or in use, and
        whoever pops it from the kept ones owns it.
        """
        return _release_kept(self._kept, self._give_back)

    # -- the caller's context ------------------------------------------------

    def enter(self, attempt: Attempt) -> None:
        """Make the attempt's scope current in the caller's context (thread or task)."""
        scope = attempt.scope
        self.registry.set(scope if scope is not None else attempt.opened_scope)

    def leave(self) -> None:
        """Forget the current scope in the caller's context."""
        self.registry.clear()

    # -- the whole request: its attempts ----------------------------------------

    def attempts(self, cookie_id: str | None, *, replayable: bool = True, where: str = "",
                 request: Any = None, more_ids: tuple[str, ...] = ()) -> RequestAttempts:
        """The attempts of one request, to iterate until one is not retried (``RequestAttempts``)."""
        return RequestAttempts(self, cookie_id, attempts=self.attempts_for(replayable=replayable),
                               where=where, request=request, more_ids=more_ids)

    def drive(self, cookie_id: str | None, step: Callable[[Attempt], Ending], *, attempts: int,
              where: str = "", request: Any = None, more_ids: tuple[str, ...] = ()) -> Ending:
        """Run *step* for attempt 1, 2, ... until one does not ask for a retry, pausing between.

        The thread's loop over ``RequestAttempts``: *step* opens, runs,
        finishes (or fails) and closes one attempt; the last ending is
        returned. *attempts* is the limit on their number (0: only the
        policy's deadline). Reporting the ending is the caller's (``report``),
        once the answer is decided.
        """
        # ``RequestAttempts``' loop, written out: a first attempt that is not
        # retried (nearly every request) pays for no iterator.
        started = self.retry.start()
        if request is None:
            request = {}
        for number in itertools.count(1):
            ending = step(Attempt(cookie_id, number, attempts, where, request, more_ids, started))
            ending.attempts = number
            if not ending.outcome.retry:
                return ending
            if ending.delay > 0:
                self.retry.sleep(ending.delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def report(self, ending: Ending) -> None:
        """Tell the manager's observers how the request ended (once per request)."""
        observers = self.manager.observers
        if observers and ending.outcome.reported is not None:
            observers.request_finished(ending.outcome.reported, ending.attempts, ending.commit_seconds)

    # -- internals -------------------------------------------------------------

    def _make_scope(self, attempt: Attempt, connection: Any) -> None:
        attempt.connection = connection
        request = attempt.request
        attempt.session = session = RequestSession(self.manager, connection, attempt.cookie_id,
                                                   more_ids=attempt.more_ids, request=request)
        attempt.scope = Scope(connection, session, request if isinstance(request, dict) else {})

    def _commit(self, tm: transaction.TransactionManager, session: RequestSession) -> float | None:
        """Commit; returns the commit's duration, None when nothing needed one."""
        txn = tm.get()
        if nothing_joined(txn):
            txn.abort()
            return None
        written = session.written_session()
        if written is not None:
            self.manager.check_storable(written)
        started = time.perf_counter()
        commit(tm)
        return time.perf_counter() - started

    def _run_hooks(self, attempt: Attempt, kind: str) -> None:
        """Run the scope's *kind* hooks; one that raises is logged and counted, never raised."""
        if attempt.scope is None:
            return
        for fn, args, kwargs in attempt.scope.hooks[kind]:
            try:
                fn(*args, **kwargs)
            except Exception as exc:
                log.exception("%s: an %s hook (%r) raised; ignored, the request's outcome stands",
                              attempt.where, kind, fn)
                self.manager.observers.hook_failed(kind, exc)

    def _log(self, ending: Ending, attempt: Attempt, *, status: str = "") -> None:
        row = ending.outcome
        if row.level is None:
            return
        error = ending.error
        message = row.message.format(
            where=attempt.where, error=error, kind=type(error).__name__, attempt=attempt.number,
            limits=self.retry.limits(attempt.attempts), delay_ms=ending.delay * 1000, status=status)
        log.log(row.level, "%s", message, exc_info=error if row.traceback else None)

    def _transaction(self, attempt: Attempt) -> Any:
        if attempt.joined or attempt.connection is None:
            return None
        return self._transaction_of(attempt.tm)

    @staticmethod
    def _transaction_of(tm: transaction.TransactionManager | None) -> Any:
        if tm is None:
            return None
        try:
            return tm.get()
        except NoTransaction:  # explicit mode: nothing begun
            return None

    def _take_manager(self) -> transaction.TransactionManager:
        try:
            return self.idle_managers.pop()
        except IndexError:
            return RequestTransactionManager()

    def _give_back(self, tm: transaction.TransactionManager) -> None:
        """Keep *tm* for a later request if it is as good as new: no transaction, no synchronizer."""
        if (getattr(tm, "_txn", True) is None and not tm.registeredSynchs()
                and len(self.idle_managers) < self.max_idle_managers):
            self.idle_managers.append(tm)



def _release_kept(kept: dict[int, tuple[Any, transaction.TransactionManager]],
                  give_back: Callable[[transaction.TransactionManager], None] | None,
                  only: list[int] | None = None) -> int:
    """Close the connections in *kept* (of the thread ids *only*, or all); managers go to *give_back*.

    Returns how many were released.
    """
    released = 0
    for ident in list(kept) if only is None else only:
        pair = kept.pop(ident, None)
        if pair is None:
            continue
        connection, tm = pair
        if connection.transaction_manager is tm:  # not already released by DB.close()
            try:
                connection.close()
            except Exception:  # at shutdown or collection: nothing else to do with it
                log.exception("closing a kept connection failed")
            else:
                if give_back is not None:
                    give_back(tm)
        released += 1
    return released


class RequestAttempts:
    """One request's attempts at its transaction, as an iterator: the one retry loop of every front door.

    Iterate it; run each ``Attempt`` (open, run the application, finish or
    fail, close) and tell it how that ended with ``end(ending)``, which
    returns the pause to take before the next attempt (0 for none). The
    iteration stops after an ending that is not retried; ``ending`` is then
    the request's, its ``attempts`` set. A thread pauses with
    ``core.retry.sleep``, a task with ``asyncio.sleep``; nothing else differs,
    as with ``transaction``'s own ``attempts()``::

        run = core.attempts(cookie_id, where="GET /", request=scope)
        for attempt in run:
            pause = run.end(await one_attempt(attempt))
            if pause:
                await asyncio.sleep(pause)
        core.report(run.ending)

    The retry deadline counts from the iterator's creation. Threading: one
    request's, in one thread or task at a time.
    """

    __slots__ = ("_core", "_cookie_id", "_attempts", "_where", "_request", "_more_ids", "_started",
                 "_ending")

    def __init__(self, core: TransactionCore, cookie_id: str | None, *, attempts: int, where: str = "",
                 request: Any = None, more_ids: tuple[str, ...] = ()) -> None:
        self._core = core
        self._cookie_id = cookie_id
        self._attempts = attempts
        self._where = where
        self._request = request
        self._more_ids = more_ids
        self._started = core.retry.start()
        self._ending: Ending | None = None

    def __iter__(self) -> Iterator[Attempt]:
        for number in itertools.count(1):
            self._ending = None
            yield self._core.attempt(self._cookie_id, number=number, attempts=self._attempts,
                                     where=self._where, request=self._request, more_ids=self._more_ids,
                                     started=self._started)
            ending = self.ending
            ending.attempts = number
            if not ending.retry:
                return

    def end(self, ending: Ending) -> float:
        """Record how the current attempt ended; the pause before the next one (0: none, or no next)."""
        self._ending = ending
        return ending.delay if ending.retry else 0.0

    @property
    def ending(self) -> Ending:
        """How the last attempt ended (the request's, once the iteration is over)."""
        if self._ending is None:
            raise RuntimeError("an attempt was not ended: call end(ending) for each attempt")
        return self._ending


__all__ = ["IDLE_MANAGERS", "USED", "Attempt", "CommitVeto", "Ending", "Headers", "RequestAttempts",
           "RequestTransactionManager", "SessionUse", "TransactionCore", "default_commit_veto"]
