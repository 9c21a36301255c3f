"""The exceptions zodbsession raises: one root, one class per situation.

Each class also inherits the builtin a caller would naturally catch
(``KeyError`` for a missing session, ``ValueError`` for bad configuration), so
code that does not know about zodbsession still handles them sensibly.

One class, one meaning. ``PublishError`` and ``Redirect`` are answers an
application gives on purpose, and they subclass ``ZodbSessionError`` too: an
``except ZodbSessionError`` inside the application also catches its own
``Redirect``. Catch the narrower class you mean, or re-raise ``PublishError``
first. The front doors catch ``PublishError`` before anything else.
"""

from __future__ import annotations

from collections.abc import Iterable

from transaction.interfaces import AlreadyInTransaction, TransientError


class ZodbSessionError(Exception):
    """The root of every error zodbsession raises on purpose."""


class ConfigError(ZodbSessionError, ValueError):
    """A setting is unknown, of the wrong type or out of range."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class StorageURIError(ZodbSessionError, ValueError):
    """A storage URI names no known scheme or carries options ZODB rejects."""


class DatabaseLocked(ZodbSessionError, RuntimeError):
    """An embedded FileStorage is held open, and locked, by another process."""


class SessionNotFound(ZodbSessionError, KeyError):
    """No live session has the given id (it never existed, expired or was revoked)."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; ours is a sentence.
        return str(self.args[0]) if self.args else "no such session"


class NoActiveRequest(ZodbSessionError, LookupError):
    """The scoped registry was asked for the current session outside a request."""


class PublishError(ZodbSessionError):
    """An HTTP answer the application gives on purpose; the transaction commits.

    Raise it (or a subclass) for a 4xx answer or a redirect whose session
    changes must survive: a flash message set before a redirect, a counter of
    failed logins. Anything else that escapes the application aborts.
    """

    status: str = "400 Bad Request"

    def __init__(
        self,
        message: str = "",
        *,
        status: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.message = message
        self.headers = list(headers)


class Redirect(PublishError):
    """Send the client elsewhere (303 See Other by default) and commit."""

    status = "303 See Other"

    def __init__(self, location: str, *, status: str | None = None) -> None:
        super().__init__("", status=status, headers=[("Location", location)])
        self.location = location


class CommitOutcomeUnknown(ZodbSessionError):
    """The storage went away during the two-phase commit's finish.

    Whether the transaction was applied is unknown, so it is not retried
    blindly: a retry could apply the same change twice.
    """


# transaction ships no types: mypy sees its base class as Any.
class UncommittedChanges(ZodbSessionError, AlreadyInTransaction):  # type: ignore[misc]
    """Work that commits its own transactions met changes not yet committed.

    ``SessionManager.expire`` (and the maintenance functions) begin and
    commit transactions of their own; beginning one would discard the
    caller's pending changes. It subclasses ``AlreadyInTransaction``, what
    an explicit-mode transaction manager raises for the same mistake, so one
    ``except`` catches both.
    """


class SessionLimitReached(ZodbSessionError):
    """Storing a new session would exceed ``SessionManager.max_sessions``.

    Raised by the first write to a new session when nothing can be evicted
    (the expiry index names no stored session), and, as ``TooManyNewSessions``,
    when the client address is over its budget. Sessions
    already stored keep working. The publisher answers 503 with
    ``Retry-After`` set to *retry_after*, when the earliest stored session's
    deadline passes.
    """

    def __init__(self, stored: int, limit: int, retry_after: int = 60) -> None:
        self.stored = stored
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(
            f"{stored} sessions are stored and max_sessions is {limit}: no new session can be "
            "stored until some expire (raise sessions.max_sessions, or lower the timeouts)"
        )


class SessionTooLarge(ZodbSessionError, ValueError):
    """A session's pickled data would exceed ``SessionManager.max_session_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the session's data would take {size} bytes pickled, over max_session_bytes "
            f"({limit}): keep large data in the application's own objects, not in the session"
        )


class InvalidUserId(ZodbSessionError, ValueError):
    """A login or ``set_user`` was given a user id that is not a short non-empty string."""


class UnsavedSessionChanges(ZodbSessionError, RuntimeError):
    """A request changed its session's data in place without marking it (``unsaved_changes = "error"``)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(
            f"the session's {', '.join(map(repr, keys))} changed in place but the session was not "
            "marked changed: call session.save_changes() after changing a nested value, or "
            "assign the value again (session[key] = value)"
        )


class NoUnitOfWork(ZodbSessionError, RuntimeError):
    """A script's session handle was used outside ``with handle.unit_of_work():``, so it has no connection."""


class UnstorableSessionValue(ZodbSessionError, TypeError):
    """A value put in a session cannot be pickled, so ZODB could not store it.

    ``key`` names the session key holding it (None when no single value
    fails on its own); the original pickling error is ``__cause__``.
    """

    def __init__(self, key: str | None, error: BaseException) -> None:
        self.key = key
        where = f"the value under session key {key!r}" if key is not None else "a session value"
        super().__init__(
            f"{where} cannot be stored: {type(error).__name__}: {error} (store only "
            "picklable values: no lambdas, locks, open files or sockets)"
        )


class StorageWriteFailed(ZodbSessionError):
    """The storage could not write a commit before every vote passed (disk full, I/O error).

    Nothing was committed: the storage rolled its file back. The request may
    be retried later (the publisher answers 503 with ``Retry-After``).
    """


class StorageUnavailable(ZodbSessionError, ConnectionError):
    """The storage cannot be reached now: a ZEO server that did not answer within its
    wait_timeout, or a storage (an SQL server) that refused to open a connection.

    Nothing was done; the request is answered 503 at once rather than retried, since
    the storage already waited before saying so.
    """


class SessionBusy(ZodbSessionError):
    """Too many requests already wait for this session's lock: answered 429 at once.

    ``retry_after`` is the seconds the client should wait, estimated from how
    long the requests ahead of it hold the lock.
    """

    def __init__(self, waiting: int, limit: int, retry_after: int) -> None:
        self.waiting = waiting
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(self._message())

    def _message(self) -> str:
        return (f"{self.waiting} request(s) already wait for this session, the limit is {self.limit}: "
                "raise publisher.max_waiting_per_session, or send fewer parallel requests")


class SessionWaitTimeout(SessionBusy):
    """A request waited for its session's lock longer than its deadline: answered 503."""

    def _message(self) -> str:
        return (f"waited too long for this session's lock ({self.waiting} request(s) ahead): "
                "raise publisher.session_wait_timeout, or make the session's requests shorter")


class RequestBodyTooLarge(ZodbSessionError, ValueError):
    """A request's body is longer than ``max_request_body``: it is answered 413 unread."""

    def __init__(self, size: int | None, limit: int) -> None:
        self.size = size
        self.limit = limit
        what = f"{size} bytes" if size is not None else "a chunked body"
        super().__init__(f"the request's body ({what}) exceeds max_request_body ({limit} bytes)")


class SnapshotBehind(ZodbSessionError, TransientError):  # type: ignore[misc]
    """A cookie named no session, and the storage holds transactions this one's snapshot lacks.

    Raised on the miss path only (``freshness.catch_up``), once this process
    has received what the storage committed: the request's next attempt
    begins a transaction that sees it, so a session another server has just
    created is found instead of being answered with a fresh one. A
    ``TransientError``: the front doors retry the attempt.
    """

    def __init__(self, seen: str, newest: str) -> None:
        super().__init__(f"the transaction's snapshot (up to {seen}) is older than the storage's "
                         f"newest transaction ({newest}); retrying with a fresh snapshot")


class TooManyNewSessions(SessionLimitReached):
    """One client address started more sessions and logins this minute than its budget.

    Raised before anything is stored (``budget.AddressBudget``). A kind of
    ``SessionLimitReached``: the publisher answers 503 with ``Retry-After``
    set to *retry_after*, the seconds until the address may start one more.
    """

    def __init__(self, address: str, per_minute: int, retry_after: int = 1) -> None:
        self.address = address
        self.per_minute = per_minute
        self.stored = 0
        self.limit = per_minute
        self.retry_after = retry_after
        ZodbSessionError.__init__(
            self, f"{address} started more than {per_minute} sessions or logins in a minute "
            "(sessions.new_per_address_per_minute)")
