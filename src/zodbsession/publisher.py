"""``SessionPublisher``: WSGI middleware that runs each request in a ZODB transaction.

Each request borrows a connection from the database's pool, with a
transaction manager of its own; the application's success commits and its
failure aborts, so the session and the application's own data (and any
other data manager in the transaction) change together or not at all. The
commit happens before the response leaves: a client never sees a success for
a change that was not committed.

What happens, by outcome (the *commit veto* decides the first three rows;
the last column is the ``RequestOutcome`` reported to the manager's observers):

=================================================  ============  ==========================  =================
outcome of one attempt                             transaction   answer                      reported as
=================================================  ============  ==========================  =================
application returned, veto says commit             commit        the application's response  committed
application raised ``PublishError`` (4xx, redir.)  commit        the error's status and body committed
application returned a 5xx (default veto)          abort         the application's response  aborted_veto
application raised anything else                   abort         500, logged with traceback  aborted_exception
the session cannot be stored (too large, a value   abort         500, logged naming the key  aborted_invalid
that cannot be pickled), checked before the commit
a new session refused: ``max_sessions`` reached    abort         503 with Retry-After        session_limit
``TransientError`` (app or commit), attempts left  abort, retry  (next attempt)              (request_retried)
``TransientError`` on the last attempt             abort         503 with Retry-After        gave_up
ZEO server unreachable (``ClientDisconnected``)    abort         503 at once, not retried    storage_error
the storage failed to write before every vote      abort         503 with Retry-After        storage_error
(``OSError``: disk full, file too large)
commit failed after every vote (outcome unknown)   unknown       503, logged, not retried    outcome_unknown
commit failed before that, not an ``OSError``      abort         500, logged                 aborted_exception
=================================================  ============  ==========================  =================

A transaction that nothing joined (no write to any object, no other data
manager, no commit hook) is aborted rather than committed: the same outcome
for less work, which is what a read costs.

Retries replay the request with a fresh environ and the buffered body, after
a short randomized back-off. A body larger than ``max_replay_bytes`` is not
buffered, and such a request gets one attempt only.

``ClientDisconnected`` is a ``TransientError`` but is not retried: ZEO's
client raises it only after waiting its ``wait_timeout`` for the server to
come back, so retrying would hold the request ``retry_attempts`` times that
long. The request gets a 503 after one bounded wait instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import transaction
from transaction.interfaces import TransientError
from ZEO.Exceptions import ClientDisconnected
from ZODB import DB
from ZODB.POSException import ConnectionStateError

from zodbsession.cookies import CookiePolicy, read_cookie
from zodbsession.errors import (
    CommitOutcomeUnknown,
    PublishError,
    SessionLimitReached,
    SessionTooLarge,
    StorageWriteFailed,
    UnstorableSessionValue,
)
from zodbsession.manager import SessionManager
from zodbsession.observe import RequestOutcome
from zodbsession.registry import Scope, SessionRegistry
from zodbsession.registry import registry as default_registry
from zodbsession.request_session import RequestSession
from zodbsession.session import is_well_formed_id

log = logging.getLogger(__name__)

Headers = list[tuple[str, str]]
StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
#: ``commit_veto(environ, status, headers) -> True`` to abort instead of commit.
CommitVeto = Callable[[dict[str, Any], str, Headers], bool]


#: Idle transaction managers a publisher keeps for reuse (about one per server thread).
IDLE_MANAGERS = 32


def default_commit_veto(environ: dict[str, Any], status: str, headers: Headers) -> bool:
    """Abort on a 5xx answer; commit everything else, 4xx and redirects included."""
    return status.startswith("5")


class SessionPublisher:
    """Wraps a WSGI application so that each request is one ZODB transaction.

    The environ gets ``zodbsession.session`` (a lazy ``RequestSession``),
    ``zodbsession.connection`` and ``zodbsession.attempt`` (1 for the first
    try); the scoped *registry* holds the same for code that has no environ.

    ``streaming=True`` commits as soon as the application has returned its
    iterable and produced its first chunk, and streams the rest afterwards.
    It gives up three things: changes made while the rest of the body is
    produced are discarded, an error in the middle of the body can no longer
    roll anything back (the client gets a truncated body), and a conflict
    found then cannot be retried. Use it for large downloads only.

    ``join_outer_transaction=True`` is for stacks where another manager
    (pyramid_tm, repoze.tm2) owns the transaction: the publisher then opens
    the connection on the thread's default transaction manager and neither
    commits, aborts nor retries; the connection goes back to the pool when
    that transaction ends.

    Threading: one publisher serves every thread of a server. With
    ``serialize_same_session`` concurrent requests that carry the same
    session cookie run one after another inside this process, so a page
    firing parallel calls on one session does not conflict with itself.
    The explicit transaction manager a request gets (the connection's
    ``transaction_manager``) is handed to a later request once this one is
    done with it: register data managers with it per request, never keep it.

    How each request ended is reported to ``manager.observers``
    (``request_finished``, and ``request_retried`` for each replay); a
    joined publisher reports nothing, as the outer manager decides.
    """

    def __init__(
        self,
        app: WSGIApp,
        db: DB,
        *,
        manager: SessionManager | None = None,
        cookie: CookiePolicy | None = None,
        commit_veto: CommitVeto = default_commit_veto,
        retry_attempts: int = 5,
        retry_backoff: float = 0.01,
        max_replay_bytes: int = 1 << 20,
        streaming: bool = False,
        serialize_same_session: bool = True,
        join_outer_transaction: bool = False,
        registry: SessionRegistry = default_registry,
    ) -> None:
        if retry_attempts < 1:
            raise ValueError(f"retry_attempts must be at least 1, not {retry_attempts}")
        self.app = app
        self.db = db
        self.manager = manager if manager is not None else SessionManager()
        self.cookie = cookie if cookie is not None else CookiePolicy()
        self.commit_veto = commit_veto
        self.retry_attempts = retry_attempts
        self.retry_backoff = retry_backoff
        self.max_replay_bytes = max_replay_bytes
        self.streaming = streaming
        self.join_outer_transaction = join_outer_transaction
        self.registry = registry
        self._session_locks = _KeyedLocks() if serialize_same_session else None
        # Explicit transaction managers no request holds, for reuse: making
        # one per request is a measurable part of a read's cost.
        self._idle_managers: list[transaction.TransactionManager] = []
        self._ensure_container()

    def _ensure_container(self) -> None:
        # Made once here, so that concurrent first requests don't all create it.
        with self.db.transaction() as connection:
            self.manager.container(connection)

    # -- the WSGI entry point -----------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        cookie_id = read_cookie(environ.get("HTTP_COOKIE"), self.cookie.name)
        if not is_well_formed_id(cookie_id):
            cookie_id = None
        if self.join_outer_transaction:
            return self._call_joined(environ, start_response, cookie_id)
        lock = self._session_locks.hold(cookie_id) if self._session_locks and cookie_id else None
        if lock is not None:
            lock.__enter__()
        try:
            response = self._run_with_retries(environ, cookie_id)
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)
        observers = self.manager.observers
        if observers:
            observers.request_finished(response.outcome, response.attempts,
                                       response.commit_seconds)
        start_response(response.status, response.headers)
        return response.body

    def _run_with_retries(self, environ: dict[str, Any], cookie_id: str | None) -> _Response:
        body, attempts = self._replayable_body(environ)
        for attempt in range(1, attempts + 1):
            fresh = dict(environ)
            # A first attempt without a body reads the server's own (empty) stream.
            if body or (body is not None and attempt > 1):
                fresh["wsgi.input"] = io.BytesIO(body)
            try:
                response = self._attempt(fresh, cookie_id, attempt)
                response.attempts = attempt
                return response
            except ClientDisconnected as exc:
                # ZEO fault handling: the storage already waited its wait_timeout
                # for the server before raising; a retry would wait again, for
                # each attempt. (In the commit's finish it is CommitOutcomeUnknown.)
                log.error("%s %s: the storage server is unreachable (%s); answering 503",
                          environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), exc)
                return _Response.plain("503 Service Unavailable", "the session database is "
                                       "unavailable, please retry", [("Retry-After", "5")],
                                       outcome="storage_error", attempts=attempt)
            except TransientError as exc:
                if attempt == attempts:
                    log.warning(
                        "%s %s: %s on attempt %d of %d, giving up with 503",
                        environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                        type(exc).__name__, attempt, attempts,
                    )
                    return _Response.plain("503 Service Unavailable", "busy, please retry",
                                           [("Retry-After", "1")], outcome="gave_up",
                                           attempts=attempt)
                delay = random.uniform(0, self.retry_backoff * 2 ** (attempt - 1))
                log.warning(
                    "%s %s: %s on attempt %d of %d, retrying in %.0f ms",
                    environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                    type(exc).__name__, attempt, attempts, delay * 1000,
                )
                self.manager.observers.request_retried(exc, attempt)
                time.sleep(delay)
            except CommitOutcomeUnknown:
                log.error("%s %s: the storage failed while finishing the commit; its outcome is "
                          "unknown, so the request is not retried", environ.get("REQUEST_METHOD"),
                          environ.get("PATH_INFO"), exc_info=True)
                return _Response.plain("503 Service Unavailable", "the outcome of this request "
                                       "is unknown; check before retrying", [("Retry-After", "1")],
                                       outcome="outcome_unknown", attempts=attempt)
        raise AssertionError("unreachable: the last attempt returns")

    def _replayable_body(self, environ: dict[str, Any]) -> tuple[bytes | None, int]:
        """Buffer the body for replay; a body over the limit allows one attempt only."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        stream = environ.get("wsgi.input")
        if stream is None or (length <= 0 and not environ.get("wsgi.input_terminated")):
            return b"", self.retry_attempts
        if length > self.max_replay_bytes:
            log.info("%s %s: body of %d bytes exceeds max_replay_bytes (%d); not retryable",
                     environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), length,
                     self.max_replay_bytes)
            return None, 1
        if length > 0:
            return stream.read(length), self.retry_attempts
        head = stream.read(self.max_replay_bytes + 1)
        if len(head) <= self.max_replay_bytes:
            return head, self.retry_attempts
        environ["wsgi.input"] = _ChainedInput(head, stream)
        log.info("%s %s: chunked body exceeds max_replay_bytes (%d); not retryable",
                 environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), self.max_replay_bytes)
        return None, 1

    # -- one attempt ----------------------------------------------------------

    def _attempt(self, environ: dict[str, Any], cookie_id: str | None, attempt: int) -> _Response:
        tm = self._take_manager()
        connection = self.db.open(transaction_manager=tm)
        try:
            tm.begin()
        except BaseException:
            # ZEO fault handling: with server_sync, begin() asks the server for
            # news and raises ClientDisconnected when it is away; the
            # connection must still go back to the pool.
            with contextlib.suppress(Exception):  # NoTransaction, or the same outage
                tm.abort()
            connection.close()
            raise
        session = RequestSession(self.manager, connection, cookie_id)
        environ["zodbsession.session"] = session
        environ["zodbsession.connection"] = connection
        environ["zodbsession.attempt"] = attempt
        self.registry.set(Scope(connection, session, environ))
        handed_off = False
        response: _Response | None = None
        try:
            response = self._call_app(environ)
            if self.commit_veto(environ, response.status, response.headers):
                log.warning("%s %s: aborted: the commit veto refused %s",
                            environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), response.status)
                tm.abort()
                response.outcome = "aborted_veto"
                if response.stream is not None:
                    # A vetoed stream (a 5xx page) is still sent whole, not cut
                    # after its first chunk; what it changes is discarded too.
                    tm.begin()
                    response.body = _StreamAfterCommit(response, tm, connection, self._give_back)
                    handed_off = True
                return response
            cookie = session.cookie_to_send()
            response.commit_seconds = self._commit(tm, session)
            https = environ.get("wsgi.url_scheme") == "https"
            if isinstance(cookie, str):
                response.headers.append(self.cookie.set_header(cookie, https=https))
            elif cookie is False:
                response.headers.append(self.cookie.delete_header(https=https))
            if response.stream is not None:
                # The rest of the body is produced after the commit; the
                # connection stays lent until the server closes the iterable.
                # A transaction is begun for it, so that what the application
                # changes meanwhile joins one that close() aborts: without it
                # the explicit manager raises NoTransaction mid-body and the
                # unregistered change stays in the pooled connection's cache,
                # for the next request to see (and maybe commit).
                tm.begin()
                response.body = _StreamAfterCommit(response, tm, connection, self._give_back)
                handed_off = True
            return response
        except TransientError:
            tm.abort()
            _close_app_quietly(response)
            raise
        except CommitOutcomeUnknown:
            _abort_quietly(tm)
            _close_app_quietly(response)
            raise
        except Exception as exc:
            _abort_quietly(tm)
            _close_app_quietly(response)
            return _refusal(environ, exc)
        finally:
            self.registry.clear()
            if not handed_off:
                connection.close()
                self._give_back(tm)

    def _commit(self, tm: transaction.TransactionManager, session: RequestSession) -> float | None:
        """Commit the attempt; returns the commit's duration, None when nothing needed one.

        A session written in this request is checked first (picklable, within
        ``max_session_bytes``), so that a bad value fails here, naming its key,
        rather than inside the commit.
        """
        if _nothing_joined(tm.get()):
            tm.abort()
            return None
        written = session.written_session()
        if written is not None:
            self.manager.check_storable(written)
        started = time.perf_counter()
        _commit(tm)
        return time.perf_counter() - started

    def _take_manager(self) -> transaction.TransactionManager:
        try:
            return self._idle_managers.pop()
        except IndexError:
            return transaction.TransactionManager(explicit=True)

    def _give_back(self, tm: transaction.TransactionManager) -> None:
        """Keep *tm* for a later request if it is as good as new: no transaction, no connection."""
        # list.append and list.pop are atomic: no lock needed between threads.
        if (getattr(tm, "_txn", True) is None and not tm.registeredSynchs()
                and len(self._idle_managers) < IDLE_MANAGERS):
            self._idle_managers.append(tm)

    def _call_app(self, environ: dict[str, Any]) -> _Response:
        """Run the application, collecting its response (or its first chunk, if streaming)."""
        response = _Response()
        try:
            app_iter = self.app(environ, response.start_response)
            try:
                if self.streaming:
                    response.begin_stream(app_iter)
                    return response
                for chunk in app_iter:
                    response.body.append(chunk)
            finally:
                # PEP 3333: the iterable is closed however the request ends;
                # only a stream handed on (begin_stream done) is closed later.
                if response.stream is None:
                    _close(app_iter)
        except PublishError as exc:
            return _Response.plain(exc.status, exc.message, exc.headers)
        if response.status is None:
            raise RuntimeError("the application returned without calling start_response")
        return response

    # -- joining an outer transaction -----------------------------------------

    def _call_joined(self, environ: dict[str, Any], start_response: StartResponse,
                     cookie_id: str | None) -> Iterable[bytes]:
        connection = self.db.open(transaction_manager=transaction.manager)
        session = RequestSession(self.manager, connection, cookie_id)
        environ["zodbsession.session"] = session
        environ["zodbsession.connection"] = connection
        environ["zodbsession.attempt"] = 1
        self.registry.set(Scope(connection, session, environ))
        try:
            response = self._call_app(environ)
        finally:
            self.registry.clear()
            _close_when_transaction_ends(connection)
        cookie = session.cookie_to_send()
        https = environ.get("wsgi.url_scheme") == "https"
        if isinstance(cookie, str):
            response.headers.append(self.cookie.set_header(cookie, https=https))
        elif cookie is False:
            response.headers.append(self.cookie.delete_header(https=https))
        start_response(response.status, response.headers)
        if response.stream is not None:
            # Streaming too: send the rest, not just the first chunk; the outer
            # manager, not us, ends the transaction and so the connection.
            return _StreamAfterCommit(response, None, None)
        return response.body


class _Response:
    """The status, headers and body an application produced for one attempt.

    Also how the request ended, for the observers: ``outcome``, the
    ``attempts`` made and the ``commit_seconds`` of a commit that ran.
    """

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: Headers = []
        self.body: Any = []
        self.stream: Iterator[bytes] | None = None
        self._app_iter: Iterable[bytes] | None = None
        self.outcome: RequestOutcome = "committed"
        self.attempts = 1
        self.commit_seconds: float | None = None

    @classmethod
    def plain(cls, status: str, text: str, headers: Iterable[tuple[str, str]] = (), *,
              outcome: RequestOutcome = "committed", attempts: int = 1) -> _Response:
        response = cls()
        body = text.encode("utf-8")
        response.status = status
        response.headers = [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *headers]
        response.body = [body]
        response.outcome = outcome
        response.attempts = attempts
        return response

    def start_response(self, status: str, headers: Headers, exc_info: Any = None) -> Callable:
        # Nothing has been sent yet (we buffer), so a second call with
        # exc_info may always replace the first, as PEP 3333 allows.
        self.status = status
        self.headers = list(headers)
        return self.body.append

    def begin_stream(self, app_iter: Iterable[bytes]) -> None:
        """Pull until the first non-empty chunk, so that start_response has run."""
        self._app_iter = app_iter
        iterator = iter(app_iter)
        for chunk in iterator:
            self.body.append(chunk)
            if chunk:
                break
        self.stream = iterator

    def close_app(self) -> None:
        if self._app_iter is not None:
            _close(self._app_iter)


class _StreamAfterCommit:
    """The rest of a streamed body; returns the connection when the server closes it."""

    def __init__(self, response: _Response, tm: transaction.TransactionManager | None,
                 connection: Any,
                 give_back: Callable[[transaction.TransactionManager], None] | None = None) -> None:
        self._head = list(response.body)
        self._rest = response.stream
        self._response = response
        self._tm = tm
        self._connection = connection
        self._give_back = give_back

    def __iter__(self) -> Iterator[bytes]:
        yield from self._head
        if self._rest is not None:
            yield from self._rest

    def close(self) -> None:
        try:
            self._response.close_app()
        finally:
            # Anything changed while streaming is discarded, as documented
            # (no tm: an outer transaction owns it and the connection).
            if self._tm is not None:
                _abort_quietly(self._tm)
                self._connection.close()
                if self._give_back is not None:
                    self._give_back(self._tm)


class _ChainedInput(io.RawIOBase):
    """A body stream whose first bytes were already read into *head*."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = io.BytesIO(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._head.read(size)
        if size < 0:
            return data + self._rest.read()
        if len(data) < size:
            data += self._rest.read(size - len(data))
        return data

    def readline(self, size: int = -1) -> bytes:
        line = self._head.readline(size)
        if line.endswith(b"\n") or (size >= 0 and len(line) >= size):
            return line
        return line + self._rest.readline(-1 if size < 0 else size - len(line))


class _KeyedLocks:
    """One lock per key, existing only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list[Any]] = {}  # {key -> [lock, holders]}

    def hold(self, key: str) -> _KeyedLock:
        return _KeyedLock(self, key)


class _KeyedLock:
    def __init__(self, locks: _KeyedLocks, key: str) -> None:
        self._locks = locks
        self._key = key

    def __enter__(self) -> None:
        with self._locks._guard:
            entry = self._locks._locks.setdefault(self._key, [threading.Lock(), 0])
            entry[1] += 1
        entry[0].acquire()
        self._entry = entry

    def __exit__(self, *exc: object) -> None:
        self._entry[0].release()
        with self._locks._guard:
            self._entry[1] -= 1
            if self._entry[1] == 0:
                del self._locks._locks[self._key]


class _VoteWitness:
    """A data manager that votes last and so tells when every vote has passed.

    A failure after it voted happened in the finish phase, where some
    storages may have committed already: the outcome is unknown.
    """

    transaction_manager = None

    def __init__(self) -> None:
        self.voted = False

    def sortKey(self) -> str:  # noqa: N802 (the IDataManager spelling)
        return "\U0010ffff zodbsession vote witness"

    def tpc_begin(self, txn: Any) -> None: ...

    def commit(self, txn: Any) -> None: ...

    def tpc_vote(self, txn: Any) -> None:
        self.voted = True

    def tpc_finish(self, txn: Any) -> None: ...

    def tpc_abort(self, txn: Any) -> None: ...

    def abort(self, txn: Any) -> None: ...


def _commit(tm: transaction.TransactionManager) -> None:
    """Commit, telling a finish-phase failure (CommitOutcomeUnknown) from the others."""
    witness = _VoteWitness()
    tm.get().join(witness)
    try:
        tm.commit()
    except Exception as exc:
        if witness.voted:
            raise CommitOutcomeUnknown(f"commit failed after every vote: {exc!r}") from exc
        if isinstance(exc, OSError):
            # FileStorage writes the transaction into Data.fs in its vote and
            # cuts it off again when that fails: nothing was committed.
            raise StorageWriteFailed(f"the storage could not write the commit: {exc}") from exc
        raise


def _nothing_joined(txn: transaction.Transaction) -> bool:
    """Whether committing *txn* would change nothing: no data manager, no hook, not doomed.

    A ZODB connection joins at its first write, other data managers when
    used. The transaction package has no public way to ask whether one
    joined; without its ``_resources`` (and hook lists) this says False, and
    the publisher commits as it always did.
    """
    resources = getattr(txn, "_resources", None)
    if resources is None or resources or txn.isDoomed():
        return False
    # The hook lists, read directly (the public getters build iterators):
    # a read pays for this on every request. Missing, they count as hooks.
    return not (getattr(txn, "_before_commit", True) or getattr(txn, "_after_commit", True))


def _refusal(environ: dict[str, Any], exc: Exception) -> _Response:
    """The logged answer to an attempt that ended in *exc*, its transaction aborted."""
    where = f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}"
    if isinstance(exc, SessionTooLarge | UnstorableSessionValue):
        log.error("%s: aborted: %s", where, exc)
        return _Response.plain("500 Internal Server Error", "internal server error",
                               outcome="aborted_invalid")
    if isinstance(exc, SessionLimitReached):
        log.warning("%s: aborted: a new session was refused: %s", where, exc)
        return _Response.plain("503 Service Unavailable", "too many sessions, please retry later",
                               [("Retry-After", "60")], outcome="session_limit")
    if isinstance(exc, StorageWriteFailed):
        log.error("%s: aborted: %s; answering 503", where, exc)
        return _Response.plain("503 Service Unavailable", "the session database cannot store "
                               "changes now, please retry", [("Retry-After", "5")],
                               outcome="storage_error")
    log.error("%s: aborted: the request raised", where, exc_info=exc)
    return _Response.plain("500 Internal Server Error", "internal server error",
                           outcome="aborted_exception")


def _abort_quietly(tm: transaction.TransactionManager) -> None:
    try:
        tm.abort()
    except Exception:
        log.exception("aborting the transaction failed")


def _close(app_iter: Any) -> None:
    close = getattr(app_iter, "close", None)
    if close is not None:
        close()


def _close_app_quietly(response: _Response | None) -> None:
    # A failed attempt still closes the stream it began (PEP 3333), without
    # letting the iterable's own error hide the one being handled.
    if response is None:
        return
    try:
        response.close_app()
    except Exception:
        log.exception("closing the application's iterable failed")


def _close_when_transaction_ends(connection: Any) -> None:
    try:
        connection.close()
    except ConnectionStateError:
        # Still joined to the outer transaction: give it back when that ends.
        # Once only: a failed commit runs the after-commit hooks and then the
        # outer abort runs the after-abort ones; a second close() would hit
        # the connection after the pool lent it to another request (it sets
        # its transaction_manager to None and returns it to the pool again).
        closed = []

        def close_once(*args: object) -> None:
            if not closed:
                closed.append(True)
                connection.close()

        txn = connection.transaction_manager.get()
        txn.addAfterCommitHook(close_once)
        txn.addAfterAbortHook(close_once)
