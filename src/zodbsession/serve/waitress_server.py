"""waitress channels whose event loop sleeps while a request's task is sending.

A waitress task (the request, in a worker thread) sends its own output:
``write_soon`` appends to the channel's buffer and flushes it at once, both
under the channel's output lock. Stock ``HTTPChannel.writable()`` is true
whenever that buffer is not empty, so an event loop that wakes (any other
connection's traffic wakes it) while a task is between appending and sending
finds the socket writable, calls ``handle_write``, which cannot take the lock
and returns, and polls again at once: a busy loop for as long as the task
holds the lock, and the task cannot finish while the loop keeps the GIL from
it. Measured under ``zodbsession serve`` with 16 keep-alive connections:
about 10 ``handle_write`` calls per request, every one with the lock held;
with ``WaitingChannel``, 9 in 48,598 requests, and 20 to 30% more reads a
second (``docs/benchmarks.md``).

``WaitingChannel.writable()`` is false while a running task holds the lock,
and ``write_soon`` wakes the loop (the server's trigger) when output is left
over after it lets the lock go, so nothing waits longer than before: output
the task could not send (a full socket) is sent by the loop as soon as the
lock is free. Everything else keeps waitress's own answer.

``FramingParser`` closes the connection after answering a request that
carries both ``Transfer-Encoding`` and ``Content-Length`` (RFC 9112, section
6.3: the transfer coding wins, and the connection must be closed after the
response), so a proxy that forwards both cannot smuggle a second request
behind the body it framed differently.

Layer: the serving layer; ``server`` and ``control`` use it on every waitress
server they make, and the benchmark's waitress contenders run on it too.
"""

from __future__ import annotations

from typing import Any

import waitress
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer


class FramingParser(HTTPRequestParser):  # type: ignore[misc]  # waitress ships no type information
    """waitress's request parser, closing the connection after a request framed two ways."""

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            # The body was read by its chunks (Transfer-Encoding wins); answer,
            # then close: the next bytes cannot be trusted to start a request.
            self.connection_close = True
            self.headers["CONNECTION"] = "close"


class WaitingChannel(HTTPChannel):  # type: ignore[misc]  # waitress ships no type information
    """An ``HTTPChannel`` that does not poll for writability while its task is flushing."""

    parser_class = FramingParser

    def writable(self) -> bool:
        if not self.total_outbufs_len or self.will_close or self.close_when_flushed:
            return bool(super().writable())
        if not self.requests:
            return True
        # A task runs. While it holds the output lock it is flushing what it
        # wrote itself (write_soon sends at once); handle_write could only
        # fail to take the lock and poll again.
        if not self.outbuf_lock.acquire(False):
            return False
        self.outbuf_lock.release()
        return True

    def write_soon(self, data: bytes) -> int:
        written = int(super().write_soon(data))
        if self.total_outbufs_len:
            # Output left over once the lock is free: wake the loop, which
            # may have looked while the lock was held and gone to sleep.
            self.server.pull_trigger()
        return written


def create_server(app: Any, **options: Any) -> Any:
    """``waitress.create_server(app, **options)``, its connections ``WaitingChannel``\\ s."""
    return with_waiting_channels(waitress.create_server(app, **options))


def with_waiting_channels(server: Any) -> Any:
    """*server* (one from ``waitress.create_server``) making ``WaitingChannel``\\ s; returns it.

    ``create_server`` returns one listening server, or for several sockets a
    ``MultiSocketServer`` whose listeners sit in its socket map.
    """
    listeners = [server] if isinstance(server, BaseWSGIServer) else [
        item for item in server.map.values() if isinstance(item, BaseWSGIServer)]
    for listener in listeners:
        listener.channel_class = WaitingChannel
    return server

