"""What the manager, the publisher and the janitor report as they work.

Four streams, one hub: session events (created, rotated, invalidated,
expired, revoked), delivered only once the transaction that caused them has
committed; the outcome of every request; every janitor run; and every
per-transaction hook that failed. Metrics, an audit log or an admin page
subscribe an ``Observer`` to the manager's ``observers``. An observer that
raises is logged and skipped: it never breaks a request or a sweep
(Products.Transience's notifications and dm.zope.session's events are the
precedent).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

EventKind = Literal["created", "rotated", "invalidated", "expired", "revoked", "evicted"]

#: How one request ended, as the publisher reports it.
RequestOutcome = Literal[
    "committed",  # the transaction committed (a PublishError's included)
    "aborted_exception",  # the application raised: 500
    "aborted_veto",  # the commit veto refused (a 5xx answer)
    "aborted_invalid",  # the session could not be stored (too large, unpicklable): 500
    "gave_up",  # every attempt conflicted: 503
    "outcome_unknown",  # the commit failed after every vote: 503, not retried
    "storage_error",  # the storage refused the commit (disk full, gone): 503
    "session_limit",  # a new session was refused, the cap being reached: 503
    "session_busy",  # too many requests already waited for this one's session: 429
    "session_wait_timeout",  # the wait for the session's lock passed its deadline: 503
    "body_too_large",  # the request's body was over max_request_body: 413, unread
    "client_gone",  # the client disconnected before the end of its body: aborted, no answer
]


@dataclass(frozen=True)
class SessionEvent:
    """Something that happened to one session, after its transaction committed."""

    kind: EventKind
    session_id: str
    user_id: str | None
    at: float
    previous_id: str | None = None  # the id before a rotation

    def __repr__(self) -> str:
        # Session ids are bearer secrets: events end up in logs.
        return f"SessionEvent({self.kind}, {self.session_id[:8]}..., user={self.user_id!r})"


class Observer:
    """Receives reports; override what you need, the rest do nothing.

    Threading: methods are called from request threads, the janitor's thread
    and scripts, concurrently; an implementation must be thread-safe.
    """

    def session_event(self, event: SessionEvent) -> None:
        """A session was created, rotated, invalidated, expired or revoked."""

    def request_retried(self, error: BaseException, attempt: int) -> None:
        """Attempt *attempt* of a request hit a transient error and will be retried."""

    def request_finished(self, outcome: RequestOutcome, attempts: int,
                         commit_seconds: float | None) -> None:
        """A request ended; *commit_seconds* is the commit's duration when one ran."""

    def janitor_ran(self, removed: int, seconds: float) -> None:
        """A janitor sweep finished, removing *removed* sessions."""

    def hook_failed(self, kind: str, error: BaseException) -> None:
        """A request's ``after_commit`` or ``after_abort`` hook (*kind*) raised; it was ignored."""


class _SessionEventCallback(Observer):
    """An observer of session events only, passing each to one plain function."""

    def __init__(self, callback: Callable[[SessionEvent], None]) -> None:
        self._callback = callback

    def session_event(self, event: SessionEvent) -> None:
        self._callback(event)


class Observers(Observer):
    """The hub: passes every report on to each subscribed observer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Observer, ...] = ()

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Add *observer*; returns a function that removes it again."""
        with self._lock:
            self._subscribers += (observer,)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not observer)

        return unsubscribe

    def on_session_event(self, callback: Callable[[SessionEvent], None]) -> Callable[[], None]:
        """Subscribe a plain function to session events only (an audit log, say)."""
        return self.subscribe(_SessionEventCallback(callback))

    def __bool__(self) -> bool:
        return bool(self._subscribers)

    def session_event(self, event: SessionEvent) -> None:
        self._each("session_event", event)

    def request_retried(self, error: BaseException, attempt: int) -> None:
        self._each("request_retried", error, attempt)

    def request_finished(self, outcome: RequestOutcome, attempts: int,
                         commit_seconds: float | None) -> None:
        self._each("request_finished", outcome, attempts, commit_seconds)

    def janitor_ran(self, removed: int, seconds: float) -> None:
        self._each("janitor_ran", removed, seconds)

    def hook_failed(self, kind: str, error: BaseException) -> None:
        self._each("hook_failed", kind, error)

    def _each(self, method: str, *args: object) -> None:
        # The tuple is replaced, never mutated, so iterating needs no lock.
        for subscriber in self._subscribers:
            try:
                getattr(subscriber, method)(*args)
            except Exception:
                log.exception("observer %r failed in %s; ignored", subscriber, method)
