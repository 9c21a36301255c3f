"""One attempt of a request at its transaction, and how it ended: ``Attempt`` and ``Ending``.

The request-transaction core (``transact``) makes both; a front door reads
them: an ``Attempt`` carries what the application is given (session,
connection, scope), an ``Ending`` the row of the outcome table and what the
answer needs (the cookie, the table's own answer, the pause before a retry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import transaction

from zodbsession.core.outcomes import Outcome, answer_headers
from zodbsession.core.registry import Scope
from zodbsession.core.request_session import RequestSession

Headers = list[tuple[str, str]]

T = TypeVar("T")


def _opened(value: T | None, what: str) -> T:
    if value is None:
        raise RuntimeError(f"the attempt is not open: it has no {what} yet")
    return value


class Attempt:
    """One attempt of one request: its number, and once opened its manager, connection and scope.

    Threading: belongs to the one request it was made for; its steps may run
    in different threads one after another, never at once.
    """

    __slots__ = ("number", "attempts", "started", "cookie_id", "more_ids", "where", "request", "tm",
                 "connection", "session", "scope", "joined", "clean", "keep")

    def __init__(self, cookie_id: str | None, number: int, attempts: int, where: str,
                 request: Any, more_ids: tuple[str, ...], started: float) -> None:
        self.number = number
        # The request's limit on attempts (0: none but the retry deadline), and
        # when its first attempt began (the retry policy's clock).
        self.attempts = attempts
        self.started = started
        self.cookie_id = cookie_id
        # Further well-formed ids from cookies of the same name, tried in order
        # when *cookie_id* names no live session.
        self.more_ids = more_ids
        self.where = where
        self.request = request
        self.tm: transaction.TransactionManager | None = None
        self.connection: Any = None
        self.session: RequestSession | None = None
        self.scope: Scope | None = None
        self.joined = False
        # Whether its connection may stay with its thread after a clean ending
        # (``TransactionCore(keep_connections=True)`` decides at ``open``: 0 no,
        # 1 the thread's own again, 2 a new one if there is room).
        self.keep = 0
        # Ended as planned (``TransactionCore.finish`` committed, or aborted a
        # read's empty transaction): its connection may be kept for the thread.
        self.clean = False

    @property
    def last(self) -> bool:
        """Whether no attempt follows this one, whatever happens: the count is reached.

        The retry deadline may end the attempts sooner; the core asks the
        policy (``RetryPolicy.allows``) when an attempt fails.
        """
        return bool(self.attempts) and self.number >= self.attempts

    @property
    def data(self) -> dict[str, Any]:
        """This attempt's scratch mapping (``Scope.data``)."""
        return self.opened_scope.data

    # The attributes above are None until the core opens the attempt; these
    # are them once it has, for code that runs only then.

    @property
    def opened_tm(self) -> transaction.TransactionManager:
        """``tm`` of an attempt the core opened itself (not joined); RuntimeError before."""
        return _opened(self.tm, "transaction manager")

    @property
    def opened_session(self) -> RequestSession:
        """``session`` of an opened (or joined) attempt; RuntimeError before."""
        return _opened(self.session, "session")

    @property
    def opened_scope(self) -> Scope:
        """``scope`` of an opened (or joined) attempt; RuntimeError before."""
        return _opened(self.scope, "scope")


@dataclass(frozen=True)
class SessionUse:
    """What happened to the session in one request, as far as its response is concerned.

    *cookie* is what the client's cookie must become: a new id, False to
    delete it, None to leave it. *max_age* is what that new id's cookie asks
    for (``CookiePolicy.set_header``'s argument; None: the policy's own).
    *used* is whether the application read or changed the session at all.
    ``zodbsession.web.headers.session_headers`` turns it into headers.
    """

    cookie: str | bool | None = None
    max_age: Any = None
    used: bool = False


#: A request that never touched its session: nothing for the response to carry.
UNUSED = SessionUse()


@dataclass
class Ending:
    """How an attempt ended: its row of the outcome table, and what the front door needs.

    ``session_use`` is what happened to the session, for the response's
    headers; it is set only for a commit. ``delay`` is the pause before the
    next attempt when ``retry``.
    """

    outcome: Outcome
    error: BaseException | None = None
    commit_seconds: float | None = None
    session_use: SessionUse = UNUSED
    delay: float = 0.0
    attempts: int = 1

    @property
    def retry(self) -> bool:
        """Whether the request is to be tried again."""
        return self.outcome.retry

    @property
    def committed(self) -> bool:
        """Whether the request's transaction committed (or, changing nothing, needed no commit)."""
        return self.outcome.fate == "commit"

    @property
    def own_answer(self) -> bool:
        """Whether the front door sends the row's answer rather than the application's."""
        return self.outcome.status is not None

    def answer(self) -> tuple[str, Headers, bytes]:
        """The row's own answer: status, headers and body (a refusal, an error page)."""
        row = self.outcome
        if row.status is None:
            raise ValueError(f"the {row.name} outcome sends the application's answer, not its own")
        return row.status, answer_headers(row, self.error), row.body.encode("utf-8")
