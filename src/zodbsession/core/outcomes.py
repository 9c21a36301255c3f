"""The outcome table: how a request's attempt ended, and what follows from it.

Every way an attempt can end is one row of ``TABLE``, and the row says
everything that follows: the transaction's fate, whether the request is
tried again, the HTTP answer (none of its own: the application's), the log
level, and the ``RequestOutcome`` reported to the manager's observers. The
first four rows are decided by the front door (the commit veto, a
``PublishError``, a client gone mid-body); a failure gets the first later
row it matches. A fate of ``none`` means that no transaction was
begun. The table below is ``render_table()``'s output, and a test keeps it
equal to ``TABLE``:

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

``ClientDisconnected`` is a ``TransientError`` and yet not retried: ZEO's
client raises it only after waiting its ``wait_timeout`` for the server, so a
retry would hold the request that long again, for each attempt. It is matched
by name, so that nothing here imports ZEO when the storage is not ZEO.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, TypedDict

from zodbsession.core.errors import (
    CommitOutcomeUnknown,
    RequestBodyTooLarge,
    SessionBusy,
    SessionLimitReached,
    SessionTooLarge,
    SessionWaitTimeout,
    StorageUnavailable,
    StorageWriteFailed,
    UnstorableSessionValue,
)
from zodbsession.core.observe import RequestOutcome

Fate = Literal["commit", "abort", "unknown", "none"]
Match = Literal["decided", "error", "retryable", "last_retryable"]

#: Errors known by the dotted name of a class in their MRO (so that ZEO need not be imported).
CLIENT_DISCONNECTED = "ZEO.Exceptions.ClientDisconnected"


@dataclass(frozen=True)
class Outcome:
    """One row of the outcome table.

    ``status`` None means the application's own answer is sent; otherwise
    ``status``, ``headers`` and ``body`` make a short text/plain answer (a
    ``Retry-After`` the error carries, ``retry_after``, replaces the row's).
    ``errors`` are the classes (or dotted class names) a failure must be an
    instance of for the row to match; ``match`` says what else decides it
    (``decided``: the front door picks the row, no error matches it).
    """

    name: str
    when: str
    fate: Fate
    retry: bool
    answer: str
    reported: RequestOutcome | None
    level: int | None = None
    traceback: bool = False
    status: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    match: Match = "error"
    errors: tuple[type[BaseException] | str, ...] = ()
    #: The log line, formatted with ``where``, ``error``, ``kind`` (the error's class name),
    #: ``attempt``, ``attempts``, ``delay_ms`` and ``status``.
    message: str = "{where}: {error}"

    @property
    def log(self) -> str:
        """The log column: the level's name, ``+tb`` when the traceback is logged."""
        if self.level is None:
            return "-"
        return logging.getLevelName(self.level) + ("+tb" if self.traceback else "")


class _PlainAnswer(TypedDict):
    """The ``Outcome`` fields of a short text/plain answer, spread into a row with ``**``."""

    status: str
    body: str
    headers: tuple[tuple[str, str], ...]


def _plain(status: str, body: str, retry_after: str | None = None) -> _PlainAnswer:
    headers: tuple[tuple[str, str], ...] = (("Retry-After", retry_after),) if retry_after is not None else ()
    return {"status": status, "body": body, "headers": headers}


#: Every row, in matching order: a failure gets the first row it matches.
TABLE: tuple[Outcome, ...] = (
    Outcome("committed", "the application returned, the veto says commit", "commit", False,
            "the application's", "committed", match="decided"),
    Outcome("publish_error", "the application raised ``PublishError`` (4xx, redirect)", "commit", False,
            "the error's status and body", "committed", match="decided"),
    Outcome("vetoed", "the application answered a 5xx (the default veto)", "abort", False,
            "the application's", "aborted_veto", logging.WARNING, match="decided",
            message="{where}: aborted: the commit veto refused {status}"),
    Outcome("client_gone", "the client disconnected before the end of its body", "abort", False,
            "none (the client is gone)", "client_gone", logging.INFO, match="decided",
            message="{where}: the client disconnected before the end of its body; aborted"),
    Outcome("body_too_large", "the body is over ``max_request_body``", "abort", False,
            "413 (unread, if its length was declared)", "body_too_large", logging.WARNING,
            **_plain("413 Content Too Large", "the request's body is too large"),
            errors=(RequestBodyTooLarge,),
            message="{where}: refused with 413: {error}"),
    Outcome("session_wait_timeout", "the wait for this session's lock passed its deadline", "none", False,
            "503 with Retry-After (an estimate)", "session_wait_timeout", logging.WARNING,
            **_plain("503 Service Unavailable", "this session is busy, please retry", "1"),
            errors=(SessionWaitTimeout,),
            message="{where}: refused with 503: {error}"),
    Outcome("session_busy", "too many requests wait for this session already", "none", False,
            "429 with Retry-After (an estimate)", "session_busy", logging.WARNING,
            **_plain("429 Too Many Requests", "too many requests for this session at once, "
                     "please retry", "1"), errors=(SessionBusy,),
            message="{where}: refused with 429: {error}"),
    Outcome("storage_unavailable", "ZEO away (``ClientDisconnected``), the storage unopenable", "abort",
            False, "503 with Retry-After: 5", "storage_error", logging.ERROR,
            **_plain("503 Service Unavailable", "the session database is unavailable, please retry", "5"),
            errors=(StorageUnavailable, CLIENT_DISCONNECTED),
            message="{where}: the storage server is unreachable ({error}); answering 503"),
    Outcome("outcome_unknown", "the commit failed after every vote", "unknown", False,
            "503 with Retry-After: 1", "outcome_unknown", logging.ERROR, traceback=True,
            **_plain("503 Service Unavailable", "the outcome of this request is unknown; "
                     "check before retrying", "1"),
            errors=(CommitOutcomeUnknown,),
            message=("{where}: the storage failed while finishing the commit; its outcome is unknown, "
                     "so the request is not retried")),
    Outcome("conflict", "a retryable error, with attempts and time left", "abort", True,
            # INFO: a conflict retried is normal under load (a hot session gives
            # thousands a minute); giving up is the WARNING.
            "(the next attempt's)", None, logging.INFO, match="retryable",
            message="{where}: {kind} on attempt {attempt} {limits}, retrying in {delay_ms:.0f} ms"),
    Outcome("gave_up", "a retryable error, with no attempt or time left", "abort", False,
            "503 with Retry-After: 1", "gave_up", logging.WARNING,
            **_plain("503 Service Unavailable", "busy, please retry", "1"), match="last_retryable",
            message="{where}: {kind} on attempt {attempt} {limits}, giving up with 503"),
    Outcome("invalid_session", "the session cannot be stored (too large, unpicklable)", "abort", False,
            "500", "aborted_invalid", logging.ERROR,
            **_plain("500 Internal Server Error", "internal server error"),
            errors=(SessionTooLarge, UnstorableSessionValue),
            message="{where}: aborted: {error}"),
    Outcome("session_cap", "a new session refused: ``max_sessions`` reached", "abort", False,
            "503 with Retry-After: 60", "session_limit", logging.WARNING,
            **_plain("503 Service Unavailable", "too many sessions, please retry later", "60"),
            errors=(SessionLimitReached,),
            message="{where}: aborted: a new session was refused: {error}"),
    Outcome("storage_write_failed", "the storage failed to write before every vote (OSError)", "abort",
            False, "503 with Retry-After: 5", "storage_error", logging.ERROR,
            **_plain("503 Service Unavailable", "the session database cannot store changes now, "
                     "please retry", "5"),
            errors=(StorageWriteFailed,),
            message="{where}: aborted: {error}; answering 503"),
    Outcome("app_exception", "anything else raised, by the application or the commit", "abort", False,
            "500", "aborted_exception", logging.ERROR, traceback=True,
            **_plain("500 Internal Server Error", "internal server error"), errors=(Exception,),
            message="{where}: aborted: the request raised"),
)

#: The rows by name.
ROWS: dict[str, Outcome] = {row.name: row for row in TABLE}
COMMITTED = ROWS["committed"]
PUBLISH_ERROR = ROWS["publish_error"]
VETOED = ROWS["vetoed"]
CLIENT_GONE = ROWS["client_gone"]


def _is_instance(error: BaseException, kinds: tuple[type[BaseException] | str, ...]) -> bool:
    names = None
    for kind in kinds:
        if isinstance(kind, str):
            if names is None:
                names = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(error).__mro__}
            if kind in names:
                return True
        elif isinstance(error, kind):
            return True
    return False


def classify(error: BaseException, *, retryable: bool, last: bool) -> Outcome:
    """The row for an attempt that failed with *error*.

    *retryable* is the retry policy's verdict on it (asked before the abort),
    *last* whether no attempt is left.
    """
    for row in TABLE:
        if row.match == "error":
            if _is_instance(error, row.errors):
                return row
        elif row.match == "retryable":
            if retryable and not last:
                return row
        elif row.match == "last_retryable" and retryable:
            return row
    raise AssertionError(f"unreachable: the last row matches every Exception, not {error!r}")


def answer_headers(row: Outcome, error: BaseException | None = None) -> list[tuple[str, str]]:
    """The headers of *row*'s own answer, with the error's ``retry_after`` when it has one."""
    retry_after = getattr(error, "retry_after", None)
    headers = [("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Length", str(len(row.body.encode("utf-8"))))]
    for name, value in row.headers:
        if name == "Retry-After" and retry_after is not None:
            value = str(retry_after)
        headers.append((name, value))
    return headers


_COLUMNS = ("row", "fate", "retry", "answer", "log", "reported as")


def render_table() -> str:
    """The table of the module docstring, as reStructuredText, from ``TABLE``.

    The rows' columns, then when each row applies (one line each, to keep
    the table narrow).
    """
    cells = [(row.name, row.fate, "yes" if row.retry else "no", row.answer, row.log,
              row.reported if row.reported is not None else "(request_retried)") for row in TABLE]
    widths = [max(len(c) for c in column) for column in zip(_COLUMNS, *cells, strict=True)]
    rule = "  ".join("=" * w for w in widths)

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    table = [rule, line(_COLUMNS), rule, *map(line, cells), rule]
    return "\n".join([*table, "", *(f"- ``{row.name}``: {row.when}." for row in TABLE)])
