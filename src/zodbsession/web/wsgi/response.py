"""The response to one attempt, held back until the publisher has decided its transaction.

An application's status, headers and body are buffered in a ``Response``
(or, when streaming, its first chunk), so that nothing reaches the client
before the commit. ``StreamAfterCommit`` sends the rest of a streamed body
and gives the connection back when the server closes it. Both follow PEP
3333 on closing: the application's iterable is closed however the request
ends, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)

Headers = list[tuple[str, str]]


class Response:
    """The status, headers and body an application produced for one attempt."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: Headers = []
        self._chunks: list[bytes] = []  # what the application has produced so far
        # What is sent: those chunks, or a ``StreamAfterCommit`` that goes on from them.
        self.body: Iterable[bytes] = self._chunks
        self.stream: Iterator[bytes] | None = None
        self._app_iter: Iterable[bytes] | None = None

    @classmethod
    def of(cls, status: str, headers: Iterable[tuple[str, str]], body: bytes) -> Response:
        """A complete answer the front door makes itself (the outcome table's own)."""
        response = cls()
        response.status = status
        response.headers = list(headers)
        response._chunks.append(body)
        return response

    @classmethod
    def plain(cls, status: str, text: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """A short text/plain answer (a ``PublishError``'s)."""
        body = text.encode("utf-8")
        return cls.of(status, [("Content-Type", "text/plain; charset=utf-8"),
                               ("Content-Length", str(len(body))), *headers], body)

    def start_response(self, status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
        """The ``start_response`` the application is given."""
        # Nothing has been sent yet (we buffer), so a second call with
        # exc_info may always replace the first, as PEP 3333 allows.
        self.status = status
        self.headers = list(headers)
        return self._chunks.append

    def collect(self, app_iter: Iterable[bytes], *, streaming: bool) -> None:
        """Read the application's body: all of it, or when *streaming* its first chunk."""
        try:
            if streaming:
                self._begin_stream(app_iter)
                return
            for chunk in app_iter:
                self._chunks.append(chunk)
        finally:
            # PEP 3333: the iterable is closed however the request ends;
            # only a stream handed on (begun) is closed later.
            if self.stream is None:
                close_iterable(app_iter)

    def _begin_stream(self, app_iter: Iterable[bytes]) -> None:
        # Pull until the first non-empty chunk, so that start_response has run.
        self._app_iter = app_iter
        iterator = iter(app_iter)
        for chunk in iterator:
            self._chunks.append(chunk)
            if chunk:
                break
        self.stream = iterator

    def close_app(self) -> None:
        """Close the stream this response began, if any."""
        if self._app_iter is not None:
            close_iterable(self._app_iter)

    def close_app_quietly(self) -> None:
        """Close as ``close_app`` does, logging rather than raising: a failed attempt."""
        # Its own error must not hide the one being handled.
        try:
            self.close_app()
        except Exception:
            log.exception("closing the application's iterable failed")


class StreamAfterCommit:
    """The rest of a streamed body; calls *on_close* when the server closes it.

    *on_close* is the core's ``close`` of the attempt: it aborts whatever the
    rest of the body changed and gives the connection back. Without it an
    outer transaction owns the connection and ends it.
    """

    def __init__(self, response: Response, on_close: Callable[[], None] | None = None) -> None:
        self._head = list(response.body)
        self._rest = response.stream
        self._response = response
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        yield from self._head
        if self._rest is not None:
            yield from self._rest

    def close(self) -> None:
        try:
            self._response.close_app()
        finally:
            # Anything changed while streaming is discarded, as documented.
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


def close_iterable(app_iter: Any) -> None:
    """Call the iterable's ``close`` if it has one (PEP 3333)."""
    close = getattr(app_iter, "close", None)
    if close is not None:
        close()
