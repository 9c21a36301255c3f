"""How each Pyramid request ended, told to the session manager's observers as the publisher tells them.

A tween over pyramid_tm watches each attempt's transaction; pyramid_retry's
``BeforeRetry`` event reports the attempts it replays. So metrics and the
admin dashboard (``manager.observers``) count a Pyramid application's
requests by the same ``RequestOutcome`` names as the publisher's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pyramid.request import Request
from pyramid.response import Response
from pyramid_retry import is_error_retryable
from transaction.interfaces import TransientError

from zodbsession.core.observe import RequestOutcome
from zodbsession.core.outcomes import VETOED, classify


class _Watch:
    """A synchronizer on ``request.tm`` noting whether, and how fast, the attempt committed."""

    def __init__(self) -> None:
        self.committed = False
        self.commit_seconds: float | None = None
        self._started: float | None = None

    def newTransaction(self, txn: Any) -> None:  # noqa: N802
        txn.addBeforeCommitHook(self._start)
        txn.addAfterCommitHook(self._end)

    def beforeCompletion(self, txn: Any) -> None:  # noqa: N802
        pass

    def afterCompletion(self, txn: Any) -> None:  # noqa: N802
        pass

    def _start(self) -> None:
        self._started = time.perf_counter()

    def _end(self, committed: bool) -> None:
        self.committed = committed
        if committed and self._started is not None:
            self.commit_seconds = time.perf_counter() - self._started


def outcome_of(error: BaseException | None) -> RequestOutcome:
    """The outcome an attempt that did not commit reports: the core's outcome table's (``classify``).

    No error is pyramid_tm's commit veto (or a doomed transaction); an error
    is classified as the last attempt's, since pyramid_retry replays the
    others (reported by ``report_retry``).
    """
    if error is None:
        return VETOED.reported or "aborted_veto"
    if not isinstance(error, Exception):
        return "aborted_exception"
    row = classify(error, retryable=isinstance(error, TransientError), last=True)
    return row.reported or "aborted_exception"


def report_tween_factory(handler: Callable[[Request], Response], registry: Any
                         ) -> Callable[[Request], Response]:
    """The tween (over the serializing one, so over pyramid_tm) that reports each request's end.

    Costs nothing while nobody observes: it looks at ``manager.observers``
    per request, so observers subscribed after start-up are served.
    """
    observers = registry.zodbsession.manager.observers

    def report(request: Request) -> Response:
        if not observers:
            return handler(request)
        watch = _Watch()
        tm = request.tm
        tm.registerSynch(watch)
        try:
            response = handler(request)
        except Exception as exc:
            _finished(request, watch, exc, observers)
            raise
        finally:
            tm.unregisterSynch(watch)
        _finished(request, watch, getattr(request, "exception", None), observers)
        return response

    return report


def _finished(request: Request, watch: _Watch, error: BaseException | None, observers: Any) -> None:
    if error is not None and is_error_retryable(request, error):
        return  # pyramid_retry replays it: reported by report_retry
    refused = request.environ.get("zodbsession.refused")
    outcome = "committed" if watch.committed else refused or outcome_of(error)
    attempts = request.environ.get("retry.attempt", 0) + 1
    observers.request_finished(outcome, attempts, watch.commit_seconds)


def report_retry(event: Any) -> None:
    """pyramid_retry's ``BeforeRetry`` subscriber: attempt *n* conflicted and is replayed."""
    observers = event.request.registry.zodbsession.manager.observers
    if observers:
        observers.request_retried(event.exception, event.environ.get("retry.attempt", 0) + 1)
