"""Keeping a request's body so that a retried attempt can read it again.

A WSGI input stream can be read once; a request retried after a conflict
needs its body a second time. ``replayable_body`` buffers it, up to a limit
past which the request gets one attempt only (and reads the original stream,
what was already read put back in front by ``ChainedInput``);
``attempt_environ`` gives each attempt its own environ and stream.
``check_length`` and ``LimitedInput`` hold a body to ``max_request_body``.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Protocol

from zodbsession.core.errors import RequestBodyTooLarge

log = logging.getLogger(__name__)


class InputStream(Protocol):
    """What this module reads of a ``wsgi.input`` stream (PEP 3333's input stream)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


def check_length(environ: dict[str, Any], max_request_body: int | None) -> None:
    """Raise ``RequestBodyTooLarge`` if the declared ``CONTENT_LENGTH`` is over the limit.

    Called before anything is read, so that a huge body is refused unread.
    """
    if max_request_body is None:
        return
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if length > max_request_body:
        raise RequestBodyTooLarge(length, max_request_body)


def replayable_body(environ: dict[str, Any], max_bytes: int,
                    max_request_body: int | None = None) -> bytes | None:
    """The request's body, buffered for replay; None if it is over *max_bytes*.

    A body that cannot be replayed is left for the one attempt to read:
    ``environ["wsgi.input"]`` is replaced when part of it had to be read to
    find its size (a chunked body, ``wsgi.input_terminated``). A chunked body
    longer than *max_request_body* raises ``RequestBodyTooLarge``: here if
    it shows in what is buffered, else when the application reads past it.
    """
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream: InputStream | None = environ.get("wsgi.input")
    if stream is None or (length <= 0 and not environ.get("wsgi.input_terminated")):
        return b""
    if length > max_bytes:
        log.info("%s %s: body of %d bytes exceeds max_replay_bytes (%d); not retryable",
                 environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), length, max_bytes)
        return None
    if length > 0:
        return stream.read(length)
    limit = max_request_body
    head = stream.read((max_bytes if limit is None else min(max_bytes, limit)) + 1)
    if limit is not None and len(head) > limit:
        raise RequestBodyTooLarge(None, limit)
    if len(head) <= max_bytes:
        return head
    rest = stream if limit is None else LimitedInput(stream, limit - len(head), limit)
    environ["wsgi.input"] = ChainedInput(head, rest)
    log.info("%s %s: chunked body exceeds max_replay_bytes (%d); not retryable",
             environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), max_bytes)
    return None


def attempt_environ(environ: dict[str, Any], body: bytes | None, attempt: int) -> dict[str, Any]:
    """A fresh copy of *environ* for *attempt* (1 for the first), reading *body* anew."""
    fresh = dict(environ)
    # A first attempt without a body reads the server's own (empty) stream.
    if body or (body is not None and attempt > 1):
        fresh["wsgi.input"] = io.BytesIO(body)
    return fresh


class ChainedInput(io.RawIOBase):
    """A body stream whose first bytes were already read into *head*."""

    def __init__(self, head: bytes, rest: InputStream) -> None:
        self._head = io.BytesIO(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._head.read(size)
        if size < 0:
            return data + self._rest.read()
        if len(data) < size:
            data += self._rest.read(size - len(data))
        return data

    def readline(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size  # io's readline takes None for "no limit"
        line = self._head.readline(size)
        if line.endswith(b"\n") or (size >= 0 and len(line) >= size):
            return line
        return line + self._rest.readline(-1 if size < 0 else size - len(line))


class LimitedInput(io.RawIOBase):
    """A body stream that raises ``RequestBodyTooLarge`` once more than *left* bytes are read from it."""

    def __init__(self, stream: InputStream, left: int, limit: int) -> None:
        self._stream = stream
        self._left = left
        self._limit = limit

    def readable(self) -> bool:
        return True

    def _checked(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise RequestBodyTooLarge(None, self._limit)
        return data

    def read(self, size: int = -1) -> bytes:
        # One byte more than is allowed tells a body at the limit from one over it.
        wanted = self._left + 1 if size < 0 else min(size, self._left + 1)
        return self._checked(self._stream.read(wanted))

    def readline(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size  # io's readline takes None for "no limit"
        wanted = self._left + 1 if size < 0 else min(size, self._left + 1)
        return self._checked(self._stream.readline(wanted))
