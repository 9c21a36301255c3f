"""``SessionPublisher``: WSGI middleware that runs each request in a ZODB transaction.

Each request borrows a connection from the database's pool, with a
transaction manager of its own; the application's success commits and its
failure aborts, so the session and the application's own data (and any
other data manager in the transaction) change together or not at all. The
commit happens before the response leaves: a client never sees a success for
a change that was not committed.

This module is the WSGI adapter only: the transaction, its retries and the
answer to each way a request can end belong to the request-transaction core
(``transact``, ``outcomes``, ``retry``), which the ASGI front door shares.
What happens, by outcome (the table of ``outcomes``, which a test keeps equal
to the code; the commit veto decides the first three rows, and a failure
gets the first later row it matches):

====================  =======  =====  ========================================  ========  ====================
row                   fate     retry  answer                                    log       reported as
====================  =======  =====  ========================================  ========  ====================
committed             commit   no     the application's                         -         committed
publish_error         commit   no     the error's status and body               -         committed
vetoed                abort    no     the application's                         WARNING   aborted_veto
client_gone           abort    no     none (the client is gone)                 INFO      client_gone
body_too_large        abort    no     413 (unread, if its length was declared)  WARNING   body_too_large
session_wait_timeout  none     no     503 with Retry-After (an estimate)        WARNING   session_wait_timeout
session_busy          none     no     429 with Retry-After (an estimate)        WARNING   session_busy
storage_unavailable   abort    no     503 with Retry-After: 5                   ERROR     storage_error
outcome_unknown       unknown  no     503 with Retry-After: 1                   ERROR+tb  outcome_unknown
conflict              abort    yes    (the next attempt's)                      INFO      (request_retried)
gave_up               abort    no     503 with Retry-After: 1                   WARNING   gave_up
invalid_session       abort    no     500                                       ERROR     aborted_invalid
session_cap           abort    no     503 with Retry-After: 60                  WARNING   session_limit
storage_write_failed  abort    no     503 with Retry-After: 5                   ERROR     storage_error
app_exception         abort    no     500                                       ERROR+tb  aborted_exception
====================  =======  =====  ========================================  ========  ====================

- ``committed``: the application returned, the veto says commit.
- ``publish_error``: the application raised ``PublishError`` (4xx, redirect).
- ``vetoed``: the application answered a 5xx (the default veto).
- ``client_gone``: the client disconnected before the end of its body.
- ``body_too_large``: the body is over ``max_request_body``.
- ``session_wait_timeout``: the wait for this session's lock passed its deadline.
- ``session_busy``: too many requests wait for this session already.
- ``storage_unavailable``: ZEO away (``ClientDisconnected``), the storage unopenable.
- ``outcome_unknown``: the commit failed after every vote.
- ``conflict``: a retryable error, with attempts and time left.
- ``gave_up``: a retryable error, with no attempt or time left.
- ``invalid_session``: the session cannot be stored (too large, unpicklable).
- ``session_cap``: a new session refused: ``max_sessions`` reached.
- ``storage_write_failed``: the storage failed to write before every vote (OSError).
- ``app_exception``: anything else raised, by the application or the commit.

A transaction that nothing joined (no write to any object, no other data
manager, no commit hook) is aborted rather than committed: the same outcome
for less work, which is what a read costs.

Retries replay the request with a fresh environ and the buffered body, after
a short randomized back-off. A body larger than ``max_replay_bytes`` is not
buffered, and such a request gets one attempt only; one larger than
``max_request_body`` is answered 413 before it is read (a chunked one when
it grows past the limit).

With ``serialize_same_session``, at most ``max_waiting_per_session``
requests wait behind the one holding a session, each for at most
``session_wait_timeout`` seconds; past either bound a request is answered
at once (429, or 503 after the wait) with a ``Retry-After`` estimated from
how long the session's requests take. A waiting request holds a server
thread, so this bound is what keeps one cookie from taking the whole pool.

Built from: ``transact`` (the core), ``response`` (the buffered response and
the stream sent after the commit), ``replay`` (the body kept for retries)
and ``locks`` (one bounded lock per session id).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ZODB import DB

from zodbsession.core.errors import PublishError, RequestBodyTooLarge, SessionBusy
from zodbsession.core.locks import KeyedLocks, takes_turn
from zodbsession.core.manager import SessionManager
from zodbsession.core.outcomes import VETOED
from zodbsession.core.registry import SessionRegistry
from zodbsession.core.registry import registry as default_registry
from zodbsession.core.transact import (
    IDLE_MANAGERS,
    Attempt,
    CommitVeto,
    Ending,
    SessionUse,
    TransactionCore,
    default_commit_veto,
)
from zodbsession.web.cookies import CookiePolicy, session_cookie_ids
from zodbsession.web.headers import session_headers
from zodbsession.web.options import FrontDoorOptions, front_door_options
from zodbsession.web.wsgi.replay import attempt_environ, check_length, replayable_body
from zodbsession.web.wsgi.response import Response, StreamAfterCommit

StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

__all__ = ["IDLE_MANAGERS", "CommitVeto", "SessionPublisher", "StartResponse", "WSGIApp",
           "default_commit_veto"]


class SessionPublisher:
    """Wraps a WSGI application so that each request is one ZODB transaction.

    The environ gets ``zodbsession.session`` (a lazy ``RequestSession``),
    ``zodbsession.connection`` and ``zodbsession.attempt`` (1 for the first
    try); the scoped *registry* holds the same for code that has no environ,
    with the attempt's ``data`` and hooks (``zodbsession.core.registry.after_commit``).

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

    How requests are retried, buffered, bounded and queued is *options*, a
    ``FrontDoorOptions`` (the ASGI door takes the same), or its fields as
    keywords: ``retry_attempts``, ``retry_backoff`` and ``retry_deadline``
    (or ``retry``, a ``RetryPolicy``), ``max_replay_bytes``, ``streaming``,
    ``serialize_same_session``, ``max_request_body``,
    ``max_waiting_per_session``, ``session_wait_timeout``. A request that
    conflicts is retried until it commits, for at most ``retry_deadline``
    seconds after its first attempt began and at most ``retry_attempts``
    attempts, whichever limit comes first.

    Threading: one publisher serves every thread of a server. With
    ``serialize_same_session`` concurrent writes that carry the same
    session cookie run one after another inside this process, so a page
    firing parallel calls on one session does not conflict with itself;
    its reads run side by side (``locks.takes_turn``).
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
        registry: SessionRegistry = default_registry,
        options: FrontDoorOptions | None = None,
        join_outer_transaction: bool = False,
        **option_keywords: Any,
    ) -> None:
        self.options = front_door_options(options, option_keywords)
        self.app = app
        self.db = db
        self.manager = manager if manager is not None else SessionManager()
        self.cookie = cookie if cookie is not None else CookiePolicy()
        self.join_outer_transaction = join_outer_transaction
        # A WSGI request runs in one server thread from open to close: its
        # connection may stay with the thread for its next request
        # (``TransactionCore``, keep_connections: why that is safe).
        self.core = TransactionCore(db, manager=self.manager, retry=self.options.retry,
                                    commit_veto=commit_veto, registry=registry,
                                    keep_connections=not join_outer_transaction)
        self.session_locks = (KeyedLocks(self.options.max_waiting_per_session,
                                         self.options.session_wait_timeout)
                              if self.options.serialize_same_session else None)
        self._ensure_container()

    # The core's parts, under the names the publisher has always had.
    commit_veto = property(lambda self: self.core.commit_veto)
    registry = property(lambda self: self.core.registry)
    retry = property(lambda self: self.core.retry)
    retry_attempts = property(lambda self: self.core.retry.attempts)
    retry_backoff = property(lambda self: self.core.retry.backoff)
    retry_deadline = property(lambda self: self.core.retry.deadline)
    max_request_body = property(lambda self: self.options.max_request_body)
    _idle_managers = property(lambda self: self.core.idle_managers)

    def release_connections(self) -> int:
        """Give the connections server threads keep between requests back to the pool (at shutdown).

        ``DB.close()`` releases them anyway; this is for a publisher retired
        while its database stays open. Returns how many there were.
        """
        return self.core.release_kept()

    def _ensure_container(self) -> None:
        # Made once here, so that concurrent first requests don't all create it.
        with self.db.transaction() as connection:
            self.manager.container(connection)

    # -- the WSGI entry point -----------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # Every well-formed id among the cookies of our name, first first: the
        # first that names a live session is the request's.
        ids = session_cookie_ids(environ.get("HTTP_COOKIE"), self.cookie.name)
        cookie_id, more_ids = (ids[0], tuple(ids[1:])) if ids else (None, ())
        if self.join_outer_transaction:
            response = self._call_joined(environ, cookie_id, more_ids)
        else:
            response = self._call_owned(environ, cookie_id, more_ids)
        start_response(response.status, response.headers)
        return response.body

    def _call_owned(self, environ: dict[str, Any], cookie_id: str | None,
                    more_ids: tuple[str, ...] = ()) -> Response:
        method = environ.get("REQUEST_METHOD")
        where = f"{method} {environ.get('PATH_INFO')}"
        try:
            length = environ.get("CONTENT_LENGTH")
            if (not length or length == "0") and not environ.get("wsgi.input_terminated"):
                # No body (a GET, most often): what the two calls below give
                # for it, without making them.
                body: bytes | None = b""
            else:
                check_length(environ, self.options.max_request_body)
                body = replayable_body(environ, self.options.max_replay_bytes, self.options.max_request_body)
            ending, response = self._run_with_retries(environ, cookie_id, where, body, more_ids,
                                                      method="GET" if method is None else str(method))
        except (RequestBodyTooLarge, SessionBusy) as exc:
            ending = self.core.refuse(exc, where=where, request=environ)
            response = None
        if response is None:
            response = _own_answer(ending)
        self.core.report(ending)
        return response

    def _run_with_retries(self, environ: dict[str, Any], cookie_id: str | None, where: str,
                          body: bytes | None, more_ids: tuple[str, ...] = (), *, method: str = "GET",
                          ) -> tuple[Ending, Response | None]:
        """Attempt the request until it does not ask for a retry; *body* None: not replayable.

        An attempt takes the session's turn (``session_locks``) by
        ``locks.takes_turn``: a write method's and any retry's; a first GET
        runs beside the session's other requests.
        """
        responses: list[Response | None] = []

        def step(attempt: Attempt) -> Ending:
            attempt_env = attempt_environ(environ, body, attempt.number)
            if self.session_locks is not None and cookie_id and takes_turn(method, attempt.number):
                with self.session_locks.hold(cookie_id):
                    ending, response = self._attempt(attempt_env, attempt)
            else:
                ending, response = self._attempt(attempt_env, attempt)
            responses.append(response)
            return ending

        attempts = self.core.attempts_for(replayable=body is not None)
        ending = self.core.drive(cookie_id, step, attempts=attempts, where=where, request=environ,
                                 more_ids=more_ids)
        return ending, responses[-1]

    # -- one attempt ----------------------------------------------------------

    def _attempt(self, environ: dict[str, Any], attempt: Attempt) -> tuple[Ending, Response | None]:
        """Run one attempt and end it, by the table above; the response is None for the row's own answer."""
        core = self.core
        attempt.request = environ
        try:
            core.open(attempt)
        except Exception as exc:
            ending = core.fail(attempt, exc)
            core.close(attempt)
            return ending, None
        # (``_expose``, written out: this runs for every request.)
        environ["zodbsession.session"] = attempt.session
        environ["zodbsession.connection"] = attempt.connection
        environ["zodbsession.attempt"] = attempt.number
        core.enter(attempt)
        handed_off = False
        response: Response | None = None
        try:
            response, raised = self._call_app(environ)
            # (A stream that never called it fails later, where its stream gets closed.)
            if response.status is None and not self.options.streaming:
                raise RuntimeError("the application returned without calling start_response")
            ending = core.finish(attempt, response.status or "", response.headers, raised=raised)
            if ending.outcome.fate == "commit":  # (``ending.committed``, without the property's call)
                self._add_session_headers(response, ending.session_use, environ)
            elif ending.outcome is not VETOED:  # a failure: the table's answer, or a retry
                response.close_app_quietly()
                return ending, None
            if response.stream is not None:
                # The rest of the body (a vetoed 5xx page's too) is produced
                # after the commit or abort, the connection lent until the
                # server closes the iterable. A transaction is begun for it so
                # that changes made meanwhile join one that close() aborts:
                # without it the explicit manager raises NoTransaction mid-body
                # and the change stays in the pooled connection's cache, for
                # the next request to see (and maybe commit).
                attempt.opened_tm.begin()
                response.body = StreamAfterCommit(response, lambda: core.close(attempt))
                handed_off = True
            return ending, response
        except Exception as exc:
            if response is not None:
                response.close_app_quietly()
            return core.fail(attempt, exc), None
        finally:
            core.leave()
            if not handed_off:
                core.close(attempt)

    # -- what both paths share ------------------------------------------------

    @staticmethod
    def _expose(environ: dict[str, Any], attempt: Attempt) -> None:
        """Give the application its session and connection in *environ*."""
        environ["zodbsession.session"] = attempt.session
        environ["zodbsession.connection"] = attempt.connection
        environ["zodbsession.attempt"] = attempt.number

    def _call_app(self, environ: dict[str, Any]) -> tuple[Response, PublishError | None]:
        """Run the application, collecting its response (or its first chunk, if streaming).

        A ``PublishError`` becomes its own answer, returned with it. The
        application's iterable is closed here if collecting it failed.
        """
        response = Response()
        try:
            response.collect(self.app(environ, response.start_response), streaming=self.options.streaming)
        except PublishError as exc:
            return Response.plain(exc.status, exc.message, exc.headers), exc
        return response, None

    def _add_session_headers(self, response: Response, use: SessionUse, environ: dict[str, Any]) -> None:
        """What a response built from the session carries (``web.headers``): the cookie, Vary, privacy."""
        https = environ.get("wsgi.url_scheme") == "https"
        response.headers = session_headers(response.headers, self.cookie, use, https=https)

    # -- joining an outer transaction -----------------------------------------

    def _call_joined(self, environ: dict[str, Any], cookie_id: str | None,
                     more_ids: tuple[str, ...] = ()) -> Response:
        core = self.core
        attempt = core.attempt(cookie_id, request=environ, more_ids=more_ids)
        core.join(attempt)
        self._expose(environ, attempt)
        core.enter(attempt)
        try:
            response, _ = self._call_app(environ)
        finally:
            core.leave()
            core.close(attempt)
        self._add_session_headers(response, core.session_use(attempt), environ)
        if response.stream is not None:
            # Streaming too: send the rest, not just the first chunk; the outer
            # manager, not us, ends the transaction and so the connection.
            response.body = StreamAfterCommit(response)
        return response


def _own_answer(ending: Ending) -> Response:
    """The short answer the outcome table gives for *ending* (a refusal, an error page)."""
    return Response.of(*ending.answer())
