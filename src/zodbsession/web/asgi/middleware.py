"""``SessionMiddleware``: ASGI 3 middleware that runs each HTTP request in a ZODB transaction.

The ASGI front door onto the request-transaction core (``zodbsession.core.transact``),
with the WSGI publisher's semantics: one transaction per request, the
response held back until the commit succeeded, an abort on an exception and
on a 5xx, ``PublishError`` / ``Redirect`` committed with their status,
conflicts retried with the body replayed, the same cookie, the same outcome
table (``zodbsession.core.outcomes``) and the same per-session queue, here an
``asyncio`` lock per session id with a bounded number of waiters.

The event loop never waits on ZODB I/O. On a storage where beginning,
aborting and closing touch only memory (``inline.loop_safe``: MappingStorage,
the ``file://`` group-commit FileStorage, DemoStorage over those) a read of
a session already in the connection's cache runs wholly in the loop (0
thread hops) and a write hops once, for its commit; a load the cache cannot
answer and any commit go to a worker thread (``inline``). On other storages
(ZEO, RelStorage: a begin is a round trip) opening the connection and
loading the session, then the commit or abort and the close, each run in a
worker thread. The application itself runs in the loop, in the request's
task, and reads and writes the already-loaded session in memory. A ZODB
connection is used by one thread at a time, which holds here because those
steps and the application take turns.

``lifespan`` and ``websocket`` scopes (and any other) pass through untouched:
a websocket handler gets no session and no transaction.

Built from: ``messages`` (the body kept for replay, the response held back),
``threads`` (the worker threads and ``run_in_connection``'s runner) and
``inline`` (which steps may run in the loop, and the guard that keeps them off I/O), on
the core (``transact``, ``outcomes``, ``locks``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from ZODB import DB

from zodbsession.core.errors import PublishError, RequestBodyTooLarge, SessionBusy
from zodbsession.core.locks import AsyncKeyedLocks, takes_turn
from zodbsession.core.manager import SessionManager
from zodbsession.core.outcomes import CLIENT_GONE, ROWS
from zodbsession.core.registry import SessionRegistry
from zodbsession.core.registry import registry as default_registry
from zodbsession.core.transact import (
    Attempt,
    CommitVeto,
    Ending,
    SessionUse,
    TransactionCore,
    default_commit_veto,
)
from zodbsession.web.asgi.inline import (
    LoadOnLoop,
    LoopTransactionCore,
    StepInThread,
    database_loop_safe,
    guard_connections,
    resolve_on_loop,
    scope_has_hooks,
    steps_on_loop,
    writes_pending,
)
from zodbsession.web.asgi.messages import (
    Message,
    Receive,
    ReplayReceive,
    RequestBody,
    ResponseBuffer,
    Send,
    plain_messages,
    read_body,
)
from zodbsession.web.asgi.threads import ConnectionRunner, WorkerThreads
from zodbsession.web.cookies import CookiePolicy, session_cookie_ids
from zodbsession.web.headers import session_headers
from zodbsession.web.options import FrontDoorOptions, front_door_options

log = logging.getLogger(__name__)

ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


#: The scope key of what ``run_in_connection`` uses.
RUNNER_KEY = "zodbsession.run_in_connection"


class SessionMiddleware:
    """Wraps an ASGI 3 application so that each HTTP request is one ZODB transaction.

    The scope of each attempt gets ``zodbsession.session`` (a
    ``RequestSession``, already loaded), ``session`` (the same session as a
    ``dict``, ``as_dict()``: Starlette's ``request.session``), ``zodbsession.connection`` and
    ``zodbsession.attempt`` (1 for the first try); ``current_session`` and
    ``current_connection`` work in the application's task (and in threads it
    starts with ``asyncio.to_thread``, which copy the context). The keywords
    are the WSGI ``SessionPublisher``'s, so one set of settings builds either.

    The application's messages are kept until the transaction is decided:
    the client sees a success only for a change that was committed.
    ``streaming=True`` commits at the first chunk of the body instead and
    sends the rest as it comes; it gives up what the WSGI publisher's does:
    changes made while the rest is produced are discarded, an error in the
    middle of the body can no longer roll anything back (the client gets a
    truncated body), and a conflict found then cannot be retried. Use it for
    large downloads only.

    A request's body is read before the application runs, so that a retried
    attempt can read it again; past ``max_replay_bytes`` the request gets one
    attempt, reading the rest from the client. A client that disconnects
    before the end of its body has nothing committed: the application is
    not run, or (past the replay limit) its attempt is aborted.

    With ``serialize_same_session`` requests carrying the same session
    cookie run one after another within this process; at most
    ``max_waiting_per_session`` wait (past that: 429 at once, with an honest
    ``Retry-After``), none longer than ``session_wait_timeout`` seconds (503).
    Waiting holds no thread.

    An event loop takes any number of requests at once, but each attempt
    holds a ZODB connection (and its cache): at most ``max_connections``
    attempts run at a time (None: the database's ``pool_size``), the others
    wait in the loop for a connection to come back, so the pool is never
    outgrown.

    Threading: one middleware serves one event loop. The ZODB steps that
    may wait on I/O (and ``run_in_connection``) run in *executor*; None
    gives the middleware a pool of its own, a thread per connection it may
    have in use. *inline* says whether the steps that need no I/O run in the
    loop: None decides by the storage (``inline.loop_safe``), False never,
    True insists (refused for a storage that is not loop-safe).
    ``join_outer_transaction`` exists for keyword compatibility with the
    publisher and must stay False: nothing outside owns an ASGI request's
    transaction.
    """

    def __init__(
        self,
        app: ASGIApp,
        db: DB,
        *,
        manager: SessionManager | None = None,
        cookie: CookiePolicy | None = None,
        commit_veto: CommitVeto = default_commit_veto,
        registry: SessionRegistry = default_registry,
        options: FrontDoorOptions | None = None,
        join_outer_transaction: bool = False,
        max_connections: int | None = None,
        executor: Executor | None = None,
        inline: bool | None = None,
        **option_keywords: Any,
    ) -> None:
        if join_outer_transaction:
            raise ValueError("join_outer_transaction is for WSGI stacks (pyramid_tm); an ASGI request's "
                             "transaction is always the middleware's own")
        self.options = front_door_options(options, option_keywords)
        self.app = app
        self.db = db
        self.manager = manager if manager is not None else SessionManager()
        self.cookie = cookie if cookie is not None else CookiePolicy()
        self.registry = registry
        if max_connections is None:
            max_connections = db.getPoolSize()
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        # A thread per connection in use: the ZODB steps never queue for a
        # thread, nor compete with the application's own to_thread work.
        self.threads = WorkerThreads(executor, max_connections)
        self._in_thread = self.threads.run
        safe = database_loop_safe(db)
        if inline and not safe:
            raise ValueError(f"inline=True needs a storage whose begin, abort and close touch only "
                             f"memory; {type(db.storage).__name__} may wait on I/O (leave inline=None)")
        #: Whether the steps that need no I/O run in the event loop (``inline``).
        self.inline = safe if inline is None else inline
        self.core = LoopTransactionCore(db, manager=self.manager, retry=self.options.retry,
                                    commit_veto=commit_veto, registry=registry)
        self.session_locks = (AsyncKeyedLocks(self.options.max_waiting_per_session,
                                              self.options.session_wait_timeout)
                              if self.options.serialize_same_session else None)
        self.max_connections = max_connections
        self._connections = asyncio.Semaphore(max_connections)
        #: Attempts waiting for a connection now (all ``max_connections`` are in use).
        self.connections_waiting = 0
        self._ensure_container()

    def close(self) -> None:
        """Stop the middleware's own thread pool once the server has drained (the db stays open)."""
        self.threads.close()

    def _ensure_container(self) -> None:
        # Made once here, so that concurrent first requests don't all create it.
        with self.db.transaction() as connection:
            self.manager.container(connection)

    # -- the ASGI entry point ---------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The first well-formed id of our cookie's name that names a live session wins.
        ids = session_cookie_ids(_cookie_header(scope), self.cookie.name)
        cookie_id, more_ids = (ids[0], tuple(ids[1:])) if ids else (None, ())
        where = f"{scope.get('method', '')} {scope.get('path', '')}"
        try:
            _check_length(scope, self.options.max_request_body)
            ending, answer = await self._run_attempts(scope, receive, send, cookie_id, where, more_ids)
        except (RequestBodyTooLarge, SessionBusy) as exc:
            # A huge body (refused unread, or found while buffering it), a full
            # session queue or a wait past its deadline: before any attempt,
            # since the attempts turn every error into an ending.
            ending = self.core.refuse(exc, where=where, request=scope)
            answer = self._own_answer(ending)
        self.core.report(ending)
        if _framed_two_ways(scope):
            answer = _closing(answer)
        await _send_all(send, answer)

    async def _run_attempts(self, scope: dict[str, Any], receive: Receive, send: Send,
                            cookie_id: str | None, where: str, more_ids: tuple[str, ...] = (),
                            ) -> tuple[Ending, list[Message]]:
        """Run attempts until one is not to be retried; its ending and the messages still to send."""
        body = await read_body(receive, self.options.max_replay_bytes, self.options.max_request_body)
        if body.disconnected:
            log.info("%s: the client disconnected before the end of its body; not run", where)
            return Ending(CLIENT_GONE), []
        if not body.replayable:
            log.info("%s: body over max_replay_bytes (%d); not retryable", where,
                     self.options.max_replay_bytes)
        run = self.core.attempts(cookie_id, replayable=body.replayable, where=where, request=scope,
                                 more_ids=more_ids)
        answer: list[Message] = []
        for attempt in run:
            attempt.request = dict(scope)
            # A write method's attempt and any retry take the session's turn; a
            # first GET runs beside the session's other requests (locks.takes_turn).
            if (self.session_locks is not None and cookie_id
                    and takes_turn(str(scope.get("method", "GET")), attempt.number)):
                async with self.session_locks.hold(cookie_id):
                    ending, answer = await self._attempt_with_connection(attempt, body, receive, send)
            else:
                ending, answer = await self._attempt_with_connection(attempt, body, receive, send)
            pause = run.end(ending)
            if pause > 0:
                await asyncio.sleep(pause)
        return run.ending, answer

    async def _attempt_with_connection(self, attempt: Attempt, body: RequestBody, receive: Receive,
                                       send: Send) -> tuple[Ending, list[Message]]:
        """One attempt, once one of the pool's connections is free for it."""
        self.connections_waiting += 1
        try:
            await self._connections.acquire()
        finally:
            self.connections_waiting -= 1
        try:
            return await self._attempt(attempt, body, receive, send)
        finally:
            self._connections.release()

    # -- one attempt --------------------------------------------------------------

    async def _attempt(self, attempt: Attempt, body: RequestBody, receive: Receive,
                       send: Send) -> tuple[Ending, list[Message]]:
        """Open, run, finish (or fail) and close one attempt, by the outcome table."""
        core = self.core
        try:
            await self._open(attempt)
        except Exception as exc:
            ending = core.fail(attempt, exc)  # nothing begun: no I/O
            await self._close(attempt)
            return ending, []
        request = attempt.request
        request["zodbsession.session"] = attempt.session
        # Starlette's request.session: the same session as an actual dict
        # (loaded already, so its mirror is right). Nearer the application, a
        # Starlette SessionMiddleware would put its own here instead.
        request["session"] = attempt.opened_session.as_dict()
        request["zodbsession.connection"] = attempt.connection
        request["zodbsession.attempt"] = attempt.number
        request[RUNNER_KEY] = ConnectionRunner(self.threads, lambda: attempt.connection)
        core.enter(attempt)
        try:
            replay = ReplayReceive(body, receive, self.options.max_request_body)
            return await self._run_app(attempt, replay, send)
        finally:
            core.leave()
            if attempt.tm is not None or attempt.connection is not None:  # not closed with its ending
                await self._close(attempt)

    async def _open(self, attempt: Attempt) -> None:
        """Open the attempt and load the cookie's session: in the loop while that needs no I/O."""
        if not self.inline:
            await self._in_thread(self.core.open, attempt, preload=True)
            return
        with steps_on_loop(LoadOnLoop):
            self.core.open(attempt)
            guard_connections(attempt.connection, self.manager.database)
        if attempt.cookie_id is not None and not resolve_on_loop(attempt.opened_session):
            await self._in_thread(attempt.opened_session._resolve)

    async def _close(self, attempt: Attempt) -> None:
        """``core.close``: in the loop where aborting and closing touch only memory."""
        if self.inline and not scope_has_hooks(attempt):
            # Closing loads nothing; a load refused all the same (an
            # application's own after-abort hook) is an Exception, which the
            # abort logs and the close goes on past: the connection goes back.
            with steps_on_loop(LoadOnLoop):
                self.core.close(attempt)
            return
        await self._in_thread(self.core.close, attempt)

    async def _run_app(self, attempt: Attempt, replay: ReplayReceive,
                       send: Send) -> tuple[Ending, list[Message]]:
        """Run the application in the open attempt and end the attempt by what it did."""
        core, request = self.core, attempt.request
        head: list[Ending] = []  # streaming: the ending decided at the first chunk
        response = ResponseBuffer(send, functools.partial(self._commit_head, attempt, head)
                                  if self.options.streaming else None)
        try:
            await self.app(request, replay, response)
        except Exception as raised:
            exc = _only_error(raised)
            if head:
                if response.streaming:
                    log.error("%s: the application raised after its response began: its later "
                              "changes are discarded, the body is cut short", attempt.where, exc_info=exc)
                return head[0], self._own_answer(head[0])
            if isinstance(exc, PublishError):
                ending = await self._ending(core.finish, attempt, exc.status, exc.headers, raised=exc)
                return ending, self._answer(ending, request, _publish_error_messages(exc))
            ending = await self._ending(core.fail, attempt, exc)
            return ending, self._failure_answer(ending, response)
        if head:
            return head[0], self._own_answer(head[0])
        if replay.client_gone:  # aborted, whatever the application answered
            return await self._ending(core.abandon, attempt, CLIENT_GONE), []
        if response.status is None:
            error = RuntimeError("the application returned without sending http.response.start")
            ending = await self._ending(core.fail, attempt, error)
            return ending, self._own_answer(ending)
        ending = await self._ending(core.finish, attempt, response.status_line, response.headers)
        return ending, self._answer(ending, request, response.messages)

    async def _ending(self, step: Callable[..., Ending], attempt: Attempt, *args: Any,
                      **kwargs: Any) -> Ending:
        """End the attempt by *step* (``finish``, ``fail``, ``abandon``) and close it.

        In the loop when nothing is to be committed and no hook is to run,
        else in one thread hop: a write the application made already goes
        to the thread at once (``writes_pending``), and a ``finish`` begun in the loop stops where
        its commit would begin, or at a load (``StepInThread``), and runs again, whole,
        in the thread (``inline.LoopTransactionCore``).
        """
        if self.inline and not scope_has_hooks(attempt) and not writes_pending(attempt):
            with steps_on_loop():
                try:
                    ending = step(attempt, *args, **kwargs)
                except StepInThread:
                    pass
                else:
                    self.core.close(attempt)
                    return ending
        return await self._in_thread(_then_close, self.core, step, attempt, *args, **kwargs)

    async def _commit_head(self, attempt: Attempt, head: list[Ending], response: ResponseBuffer) -> bool:
        """Streaming: decide the transaction at the first chunk, before the head goes out.

        Committed (or vetoed), the head goes out with its cookie and a
        transaction is begun for the rest, which ``close`` aborts; otherwise
        (a refusal, a conflict to retry) the application is stopped and the
        ending stands.
        """
        ending = await self._in_thread(self._finish_head, attempt, response.status_line, response.headers)
        head.append(ending)
        if ending.own_answer or ending.retry:
            return False
        self._add_session_headers(ending.session_use, response, attempt.request)
        return True

    def _finish_head(self, attempt: Attempt, status: str, headers: list[tuple[str, str]]) -> Ending:
        ending = self.core.finish(attempt, status, headers)
        if not (ending.own_answer or ending.retry):
            # Changes made while the rest streams join a transaction that
            # close() aborts; without one the explicit manager raises
            # NoTransaction at the application's next write.
            attempt.opened_tm.begin()
        return ending

    # -- answers ------------------------------------------------------------------

    def _answer(self, ending: Ending, request: dict[str, Any], messages: list[Message]) -> list[Message]:
        """*messages* (with the cookie), or the ending's own answer when it has one."""
        if ending.own_answer or ending.retry:
            return self._own_answer(ending)
        response = ResponseBuffer()
        response.messages = messages
        self._add_session_headers(ending.session_use, response, request)
        return response.messages

    @staticmethod
    def _own_answer(ending: Ending) -> list[Message]:
        return plain_messages(*ending.answer()) if ending.own_answer else []

    @staticmethod
    def _failure_answer(ending: Ending, response: ResponseBuffer) -> list[Message]:
        """The answer to an attempt the application failed.

        An application that raised after sending a complete error page of
        its own (Starlette's exception handlers do) has that page sent; any
        other answer it sent before raising is not, as it was not committed.
        """
        if (ending.outcome is ROWS["app_exception"] and response.complete
                and (response.status or 0) >= 500):
            return response.messages
        return SessionMiddleware._own_answer(ending)

    def _add_session_headers(self, use: SessionUse, response: ResponseBuffer,
                             request: dict[str, Any]) -> None:
        """What a response built from the session carries (``web.headers``): the cookie, Vary, privacy."""
        https = request.get("scheme") in ("https", "wss")
        response.edit_headers(lambda headers: session_headers(headers, self.cookie, use, https=https))


def _then_close(core: TransactionCore, step: Callable[..., Ending], attempt: Attempt, *args: Any,
                **kwargs: Any) -> Ending:
    """``step(attempt, ...)``, then ``core.close(attempt)``: what a worker thread does at an attempt's end."""
    try:
        return step(attempt, *args, **kwargs)
    finally:
        core.close(attempt)


def _only_error(error: Exception) -> Exception:
    """The one error inside an exception group of one (a task group's), else *error* itself.

    So that a conflict raised inside an application's task group is still
    seen as the conflict it is, and retried.
    """
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _check_length(scope: dict[str, Any], max_request_body: int | None) -> None:
    """Raise ``RequestBodyTooLarge`` if the declared Content-Length is over the limit (read nothing)."""
    if max_request_body is None:
        return
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return
            if length > max_request_body:
                raise RequestBodyTooLarge(length, max_request_body)
            return


def _cookie_header(scope: dict[str, Any]) -> str | None:
    """The request's Cookie header; several (HTTP/2 sends one per cookie) joined as one."""
    values = [value for name, value in scope.get("headers", ()) if name == b"cookie"]
    if not values:
        return None
    return "; ".join(bytes(value).decode("latin-1") for value in values)


def _publish_error_messages(exc: PublishError) -> list[Message]:
    body = exc.message.encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
               *exc.headers]
    return plain_messages(exc.status, headers, body)


def _framed_two_ways(scope: dict[str, Any]) -> bool:
    """Whether the request carried both Transfer-Encoding and Content-Length (RFC 9112, 6.3)."""
    names = {name.lower() for name, _value in scope.get("headers", ())}
    return b"transfer-encoding" in names and b"content-length" in names


def _closing(messages: list[Message]) -> list[Message]:
    """*messages* with ``Connection: close`` on their response start: the server closes after it.

    A request framed two ways may hide a second one behind the body a proxy
    framed differently; after answering it the connection is not trusted.
    """
    closing = []
    for message in messages:
        if message["type"] == "http.response.start":
            headers = [(n, v) for n, v in message.get("headers", ()) if bytes(n).lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        closing.append(message)
    return closing


async def _send_all(send: Send, messages: list[Message]) -> None:
    for message in messages:
        await send(message)
