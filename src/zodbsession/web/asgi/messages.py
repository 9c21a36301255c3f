"""The ASGI messages of one request, kept so that an attempt can be replayed or held back.

``read_body`` reads the request's body before the application runs, up to a
limit past which the request gets one attempt only; ``ReplayReceive`` is the
``receive`` each attempt is given, playing that body back and then handing
on to the server's own (for ``http.disconnect``). ``ResponseBuffer`` is the
``send`` the application is given: it keeps every message until the
middleware has decided the transaction, or, when streaming, until the first
chunk of the body.
"""

from __future__ import annotations

import http
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from zodbsession.core.errors import RequestBodyTooLarge

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[str, str]]


@dataclass
class RequestBody:
    """What ``read_body`` read: the messages, and whether they are the whole body.

    ``replayable`` is whether every attempt may read the body again (it is
    all here and within *max_bytes*); ``disconnected`` whether the client
    went away before its end.
    """

    messages: list[Message] = field(default_factory=list)
    complete: bool = False
    disconnected: bool = False
    size: int = 0
    max_bytes: int = 0

    @property
    def replayable(self) -> bool:
        return self.complete and not self.disconnected and self.size <= self.max_bytes


async def read_body(receive: Receive, max_bytes: int, max_request_body: int | None = None) -> RequestBody:
    """Read the request's body from *receive*, stopping past *max_bytes* or at a disconnect.

    Raises ``RequestBodyTooLarge`` if what was read is over *max_request_body*
    (a chunked body: a declared length is checked before anything is read).
    """
    body = RequestBody(max_bytes=max_bytes)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            body.disconnected = True
            return body
        body.messages.append(message)
        body.size += len(message.get("body", b""))
        if max_request_body is not None and body.size > max_request_body:
            raise RequestBodyTooLarge(None, max_request_body)
        if not message.get("more_body", False):
            body.complete = True
            return body
        if body.size > max_bytes:
            return body


class ReplayReceive:
    """The ``receive`` of one attempt: the buffered body, then the server's own.

    A replayable body comes as one ``http.request`` message; a body over the
    limit comes as read so far, then from the server, and raises
    ``RequestBodyTooLarge`` past *max_request_body*. ``client_gone`` tells
    whether the application was handed an ``http.disconnect`` before the
    body's end: that attempt must not commit, whatever it answers.
    """

    __slots__ = ("_pending", "_receive", "_body_done", "_size", "_limit", "client_gone")

    def __init__(self, body: RequestBody, receive: Receive, max_request_body: int | None = None) -> None:
        if body.replayable:
            joined = b"".join(message.get("body", b"") for message in body.messages)
            self._pending: list[Message] = [{"type": "http.request", "body": joined, "more_body": False}]
        else:
            self._pending = list(body.messages)
        self._receive = receive
        self._body_done = body.complete
        self._size = 0
        self._limit = max_request_body
        self.client_gone = False

    async def __call__(self) -> Message:
        if self._pending:
            message = self._pending.pop(0)
        else:
            message = await self._receive()
        if message["type"] == "http.disconnect":
            if not self._body_done:
                self.client_gone = True
            return message
        self._size += len(message.get("body", b""))
        if self._limit is not None and self._size > self._limit:
            raise RequestBodyTooLarge(None, self._limit)
        if not message.get("more_body", False):
            self._body_done = True
        return message


class AttemptEnded(Exception):
    """Raised into a streaming application's ``send``: its attempt ended without its answer."""


class ResponseBuffer:
    """The ``send`` the application is given: it keeps the response's messages.

    ``status`` comes from ``http.response.start``; ``complete`` is whether
    the last body message was sent. When *on_first_chunk* is given
    (streaming) it is awaited once, with this buffer, at the first body
    message that carries bytes or ends the body: if it returns True the
    buffered messages go to *passthrough* and every later one at once
    (``streaming``); if False the application is stopped, its ``send``
    raising ``AttemptEnded`` from then on (``stopped``).
    """

    def __init__(self, passthrough: Send | None = None,
                 on_first_chunk: Callable[[ResponseBuffer], Awaitable[bool]] | None = None) -> None:
        self.messages: list[Message] = []
        self.status: int | None = None
        self.complete = False
        self._passthrough = passthrough
        self._on_first_chunk = on_first_chunk if passthrough is not None else None
        self.streaming = False
        self.stopped = False

    async def __call__(self, message: Message) -> None:
        if self.stopped:
            raise AttemptEnded("this attempt has ended: its answer is the middleware's")
        kind = message["type"]
        if kind == "http.response.start":
            if self.status is not None:
                raise RuntimeError("the application sent http.response.start twice")
            self.status = int(message["status"])
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        if self.streaming:
            await self._passthrough(message)  # type: ignore[misc]
            return
        self.messages.append(message)
        if (self._on_first_chunk is not None and kind == "http.response.body"
                and (message.get("body") or self.complete)):
            if not await self._on_first_chunk(self):
                self.stopped = True
                raise AttemptEnded("this attempt has ended: its answer is the middleware's")
            self.streaming = True
            await self.flush(self._passthrough)  # type: ignore[arg-type]

    @property
    def status_line(self) -> str:
        """The status as WSGI spells it (``"200 OK"``), for a commit veto written for either."""
        return status_line(self.status or 500)

    @property
    def headers(self) -> Headers:
        """The response's headers, decoded as Latin-1 (as HTTP/1.1 and WSGI do)."""
        for message in self.messages:
            if message["type"] == "http.response.start":
                return [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                        for k, v in message.get("headers", ())]
        return []

    def edit_headers(self, edit: Callable[[list[tuple[str, str]]], list[tuple[str, str]]]) -> None:
        """Replace the buffered ``http.response.start``'s headers by ``edit(headers)``, as text."""
        for index, message in enumerate(self.messages):
            if message["type"] == "http.response.start":
                text = [(bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
                        for name, value in message.get("headers", ())]
                # A copy: the application may keep and reuse its message. ASGI names are lowercase.
                headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                           for name, value in edit(text)]
                self.messages[index] = {**message, "headers": headers}
                return
        raise RuntimeError("no http.response.start to edit the headers of")

    async def flush(self, send: Send) -> None:
        """Send the buffered messages, in order, and forget them."""
        messages, self.messages = self.messages, []
        for message in messages:
            await send(message)


def status_line(status: int) -> str:
    """``200`` as ``"200 OK"``; an unknown code gets no phrase."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def plain_messages(status: str, headers: Headers, body: bytes) -> list[Message]:
    """The messages of a short answer the middleware makes itself (a refusal, an error)."""
    code = int(status.split(" ", 1)[0])
    return [
        {"type": "http.response.start", "status": code,
         "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]
