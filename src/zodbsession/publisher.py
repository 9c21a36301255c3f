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
ZEO server unreachable (``ClientDisconnected``),   abort         503 at once, not retried    storage_error
or the storage cannot be opened (SQL server away)
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

Built from: ``commit`` (ending the transaction, telling an unknown outcome
apart), ``response`` (the buffered response and the stream sent after the
commit), ``replay`` (the body kept for retries) and ``locks`` (one lock per
session id).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import transaction
from transaction.interfaces import TransientError
from ZEO.Exceptions import ClientDisconnected
from ZODB import DB

from zodbsession.commit import abort_quietly, close_when_transaction_ends, commit, nothing_joined
from zodbsession.cookies import CookiePolicy, read_cookie
from zodbsession.db import StorageUnavailable
from zodbsession.errors import (
    CommitOutcomeUnknown,
    PublishError,
    SessionLimitReached,
    SessionTooLarge,
    StorageWriteFailed,
    UnstorableSessionValue,
)
from zodbsession.locks import KeyedLocks
from zodbsession.manager import SessionManager
from zodbsession.registry import Scope, SessionRegistry
from zodbsession.registry import registry as default_registry
from zodbsession.replay import attempt_environ, replayable_body
from zodbsession.request_session import RequestSession
from zodbsession.response import Headers, Response, StreamAfterCommit
from zodbsession.session import is_well_formed_id

log = logging.getLogger(__name__)

StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
#: ``commit_veto(environ, status, headers) -> True`` to abort instead of commit.
CommitVeto = Callable[[dict[str, Any], str, Headers], bool]


#: Idle transaction managers a publisher keeps for reuse (about one per server thread).
IDLE_MANAGERS = 32


#: The longest back-off between two attempts, in seconds, however many are allowed:
#: the doubling would otherwise hold a request for seconds at ten attempts.
MAX_BACKOFF = 0.5


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
        self._session_locks = KeyedLocks() if serialize_same_session else None
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
            response = self._call_joined(environ, cookie_id)
        else:
            if self._session_locks is not None and cookie_id:
                with self._session_locks.hold(cookie_id):
                    response = self._run_with_retries(environ, cookie_id)
            else:
                response = self._run_with_retries(environ, cookie_id)
            observers = self.manager.observers
            if observers:
                observers.request_finished(response.outcome, response.attempts,
                                           response.commit_seconds)
        start_response(response.status, response.headers)
        return response.body

    def _run_with_retries(self, environ: dict[str, Any], cookie_id: str | None) -> Response:
        body = replayable_body(environ, self.max_replay_bytes)
        attempts = self.retry_attempts if body is not None else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._attempt(attempt_environ(environ, body, attempt), cookie_id, attempt)
            except (ClientDisconnected, StorageUnavailable) as exc:
                # Not retried: the storage already waited its wait_timeout for
                # the server before raising; a retry would wait again, for each
                # attempt. (In the commit's finish it is CommitOutcomeUnknown.)
                response = _refusal(environ, exc)
            except TransientError as exc:
                if attempt < attempts:
                    ceiling = min(self.retry_backoff * 2 ** (attempt - 1), MAX_BACKOFF)
                    delay = random.uniform(0, ceiling)
                    log.warning(
                        "%s %s: %s on attempt %d of %d, retrying in %.0f ms",
                        environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                        type(exc).__name__, attempt, attempts, delay * 1000,
                    )
                    self.manager.observers.request_retried(exc, attempt)
                    time.sleep(delay)
                    continue
                log.warning(
                    "%s %s: %s on attempt %d of %d, giving up with 503",
                    environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                    type(exc).__name__, attempt, attempts,
                )
                response = Response.plain("503 Service Unavailable", "busy, please retry",
                                          [("Retry-After", "1")], outcome="gave_up")
            response.attempts = attempt
            return response
        raise AssertionError("unreachable: the last attempt returns")

    # -- one attempt ----------------------------------------------------------

    def _attempt(self, environ: dict[str, Any], cookie_id: str | None, attempt: int) -> Response:
        """Run one attempt in a transaction of its own and end it, by the table above.

        A ``TransientError`` is raised for the caller to retry; every other
        failure is answered here, the transaction aborted.
        """
        tm = self._take_manager()
        try:
            connection = self.db.open(transaction_manager=tm)
        except TransientError:
            raise
        except Exception as exc:
            # Opening polls the storage (RelStorage asks its SQL server): a
            # failure here is the storage's, not the application's.
            raise StorageUnavailable(f"the storage cannot be reached: {exc}") from exc
        try:
            tm.begin()
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
        session = self._enter_scope(environ, connection, cookie_id, attempt)
        handed_off = False
        response: Response | None = None
        try:
            response = self._call_app(environ)
            if self.commit_veto(environ, response.status, response.headers):
                log.warning("%s %s: aborted: the commit veto refused %s",
                            environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), response.status)
                tm.abort()
                response.outcome = "aborted_veto"
            else:
                self._add_cookie_header(response, session, environ)
                response.commit_seconds = self._commit(tm, session)
            if response.stream is not None:
                # The rest of the body (a vetoed 5xx page's too) is produced
                # after the commit or abort, the connection lent until the
                # server closes the iterable. A transaction is begun for it so
                # that changes made meanwhile join one that close() aborts:
                # without it the explicit manager raises NoTransaction mid-body
                # and the change stays in the pooled connection's cache, for
                # the next request to see (and maybe commit).
                tm.begin()
                response.body = StreamAfterCommit(response, tm, connection, self._give_back)
                handed_off = True
            return response
        except TransientError:
            tm.abort()
            if response is not None:
                response.close_app_quietly()
            raise
        except Exception as exc:
            abort_quietly(tm)
            if response is not None:
                response.close_app_quietly()
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
        if nothing_joined(tm.get()):
            tm.abort()
            return None
        written = session.written_session()
        if written is not None:
            self.manager.check_storable(written)
        started = time.perf_counter()
        commit(tm)
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

    # -- what both paths share ------------------------------------------------

    def _enter_scope(self, environ: dict[str, Any], connection: Any, cookie_id: str | None,
                     attempt: int) -> RequestSession:
        """Give the request its session and connection, in *environ* and the registry."""
        session = RequestSession(self.manager, connection, cookie_id)
        environ["zodbsession.session"] = session
        environ["zodbsession.connection"] = connection
        environ["zodbsession.attempt"] = attempt
        self.registry.set(Scope(connection, session, environ))
        return session

    def _call_app(self, environ: dict[str, Any]) -> Response:
        """Run the application, collecting its response (or its first chunk, if streaming)."""
        response = Response()
        try:
            response.collect(self.app(environ, response.start_response), streaming=self.streaming)
        except PublishError as exc:
            return Response.plain(exc.status, exc.message, exc.headers)
        # (A stream that never called it fails later, where its stream gets closed.)
        if response.status is None and not self.streaming:
            raise RuntimeError("the application returned without calling start_response")
        return response

    def _add_cookie_header(self, response: Response, session: RequestSession,
                           environ: dict[str, Any]) -> None:
        """Add the Set-Cookie the session asks for: its new id, or the cookie's deletion."""
        cookie = session.cookie_to_send()
        https = environ.get("wsgi.url_scheme") == "https"
        if isinstance(cookie, str):
            response.headers.append(self.cookie.set_header(cookie, https=https))
        elif cookie is False:
            response.headers.append(self.cookie.delete_header(https=https))

    # -- joining an outer transaction -----------------------------------------

    def _call_joined(self, environ: dict[str, Any], cookie_id: str | None) -> Response:
        connection = self.db.open(transaction_manager=transaction.manager)
        session = self._enter_scope(environ, connection, cookie_id, 1)
        try:
            response = self._call_app(environ)
        finally:
            self.registry.clear()
            close_when_transaction_ends(connection)
        self._add_cookie_header(response, session, environ)
        if response.stream is not None:
            # Streaming too: send the rest, not just the first chunk; the outer
            # manager, not us, ends the transaction and so the connection.
            response.body = StreamAfterCommit(response)
        return response


def _refusal(environ: dict[str, Any], exc: Exception) -> Response:
    """The logged answer to an attempt that failed with *exc* (anything but a retried conflict)."""
    where = f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}"
    if isinstance(exc, ClientDisconnected | StorageUnavailable):
        log.error("%s: the storage server is unreachable (%s); answering 503", where, exc)
        return Response.plain("503 Service Unavailable", "the session database is unavailable, "
                              "please retry", [("Retry-After", "5")], outcome="storage_error")
    if isinstance(exc, CommitOutcomeUnknown):
        log.error("%s: the storage failed while finishing the commit; its outcome is unknown, "
                  "so the request is not retried", where, exc_info=exc)
        return Response.plain("503 Service Unavailable", "the outcome of this request is unknown; "
                              "check before retrying", [("Retry-After", "1")],
                              outcome="outcome_unknown")
    if isinstance(exc, SessionTooLarge | UnstorableSessionValue):
        log.error("%s: aborted: %s", where, exc)
        return Response.plain("500 Internal Server Error", "internal server error",
                              outcome="aborted_invalid")
    if isinstance(exc, SessionLimitReached):
        log.warning("%s: aborted: a new session was refused: %s", where, exc)
        return Response.plain("503 Service Unavailable", "too many sessions, please retry later",
                              [("Retry-After", "60")], outcome="session_limit")
    if isinstance(exc, StorageWriteFailed):
        log.error("%s: aborted: %s; answering 503", where, exc)
        return Response.plain("503 Service Unavailable", "the session database cannot store "
                              "changes now, please retry", [("Retry-After", "5")],
                              outcome="storage_error")
    log.error("%s: aborted: the request raised", where, exc_info=exc)
    return Response.plain("500 Internal Server Error", "internal server error",
                          outcome="aborted_exception")
