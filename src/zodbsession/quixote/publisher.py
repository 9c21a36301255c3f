"""``ThreadSafePublisher``: Quixote's ``Publisher`` with one current request per thread.

Quixote keeps the current request on the one ``Publisher`` of the process
(``quixote.get_request()`` is ``_publisher.get_request()``), so two threads
serving two requests at once would see each other's, which is why its WSGI
wrapper refuses a threaded server. Here the current request lives in a
``ContextVar`` instead: each server thread (and each asyncio task) sees its
own, and ``get_request()``, ``get_session()``, ``get_field()``, ``redirect()``
work unchanged from any of them. The publisher stays one per process, as
Quixote requires; its configuration, logger, root directory and session
manager are shared by every thread and must not be changed per request.

A failed request goes to whoever answers it. What zodbsession's
request-transaction core has a row for (a conflict or any error the
transaction calls retryable, a ``zodbsession.PublishError`` such as
``Redirect``, a session too large, a storage away...) is raised again past
Quixote, so that the core retries or answers it by its table (a ``zodbsession.PublishError``
first goes through ``commit_changes``, as Quixote's own do); anything else
gets Quixote's own 500 page and ``abort_changes``, as Quixote's contract says.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar
from typing import Any

from quixote.http_request import HTTPRequest
from quixote.http_response import HTTPResponse
from quixote.publish import Publisher
from transaction.interfaces import TransientError

from zodbsession import PublishError
from zodbsession.core.outcomes import classify
from zodbsession.quixote.data import connection

#: The request each thread (or task) is publishing, or None between requests.
_current_request: ContextVar[HTTPRequest | None] = ContextVar("zodbsession_quixote_request", default=None)

__all__ = ["ThreadSafePublisher", "answered_by_the_core"]


class ThreadSafePublisher(Publisher):  # type: ignore[misc]  # Quixote ships no type information
    """A Quixote ``Publisher`` whose current request is per thread, so one instance serves them all.

    Threading: ``process_request`` may run in many threads at once; each
    sees only its own request through ``quixote.get_request()``. Everything
    else on the instance is shared and read-only once serving has started.
    Built as Quixote's: ``ThreadSafePublisher(root_directory,
    session_manager=..., config=...)``, one per process (a second raises
    Quixote's ``RuntimeError``; ``quixote.cleanup()`` forgets the first).
    """

    #: Read by Quixote's WSGI wrapper, which otherwise refuses multithreaded servers.
    is_thread_safe = True

    def _set_request(self, request: HTTPRequest) -> None:
        _current_request.set(request)

    def _clear_request(self) -> None:
        _current_request.set(None)

    def get_request(self) -> HTTPRequest | None:
        """The request this thread is publishing (None outside one)."""
        return _current_request.get()

    def process_request(self, request: HTTPRequest) -> HTTPResponse:
        """Quixote's, with the thread's request forgotten however it ends (an error raised again too)."""
        try:
            return super().process_request(request)
        finally:
            self._clear_request()

    def finish_failed_request(self) -> Any:
        """Quixote's 500 page and ``abort_changes``, unless the core answers this error itself."""
        error = sys.exc_info()[1]
        if error is not None and answered_by_the_core(error):
            if isinstance(error, PublishError):
                # Answered by the publisher, but a PublishError all the same: it commits, as Quixote's do.
                self.session_manager.finish_successful_request()
            raise error
        return super().finish_failed_request()


def answered_by_the_core(error: BaseException) -> bool:
    """Whether the request-transaction core, not Quixote, answers *error*.

    True for zodbsession's ``PublishError`` (answered with its status, and
    committed) and for every error the core's outcome table gives a row of
    its own to (retried, 503, 429...), asked of the table itself; False for
    an application's ordinary exception, which is Quixote's to show as a 500.
    """
    if not isinstance(error, Exception):
        return False
    if isinstance(error, PublishError):
        return True
    retryable = isinstance(error, TransientError) or _retryable_by_the_transaction(error)
    return classify(error, retryable=retryable, last=False).name != "app_exception"


def _retryable_by_the_transaction(error: Exception) -> bool:
    """Whether a data manager that joined the request's transaction (SQLAlchemy...) says retry."""
    try:
        return bool(connection().transaction_manager.isRetryableError(error))
    except Exception:  # no request, or no transaction to ask
        return False
