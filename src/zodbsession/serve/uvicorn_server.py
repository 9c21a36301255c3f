"""Serving an ASGI application on uvicorn, driven like ``serve``'s waitress listener.

``serve`` runs uvicorn's server in a thread of its own, on the socket it (or
the pre-fork supervisor) bound, while the main thread keeps the signals, the
supervisor watch and the admin listener: the same life cycle as the WSGI
path. Stopping sets uvicorn's ``should_exit``, and uvicorn's own graceful
shutdown then stops accepting, lets the requests in flight answer (for at
most the drain timeout) and runs the application's lifespan shutdown.

The [server] limits map onto uvicorn's: ``connection_limit`` onto
``limit_concurrency`` (above it uvicorn answers 503), ``channel_timeout``
onto the keep-alive timeout, ``max_request_header_size`` onto h11's largest
incomplete event, ``trusted_proxy`` onto ``forwarded_allow_ips``.

uvicorn has no timeout of its own for a request's headers: a connection that
sends a partial request line (or nothing) stays open for ever, and a thousand
of them use up ``limit_concurrency``. ``header_deadline_protocol`` gives its
h11 protocol the deadline waitress keeps: a connection has ``channel_timeout``
seconds from its opening (or from the end of its previous response) to finish
a request's headers, however it trickles them, and is closed after that.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zodbsession.core.errors import ConfigError

if TYPE_CHECKING:
    from zodbsession.config import Settings

log = logging.getLogger(__name__)


class UvicornListener:
    """uvicorn's server for one ASGI application on already-bound *sockets*, in a thread.

    Threading: ``start``, ``started``, ``stop`` and ``join`` are called from
    the thread that made it; uvicorn's event loop runs in its own thread.
    """

    def __init__(self, app: Any, settings: Settings, sockets: Sequence[socket.socket],
                 drain_timeout: float) -> None:
        try:
            import uvicorn
        except ImportError:
            raise ConfigError("server.app", "is an ASGI application, which runs on uvicorn: "
                              "pip install 'zodbsession[asgi]'") from None
        self.sockets = list(sockets)
        server = settings.server
        options: dict[str, Any] = {
            "lifespan": "auto", "log_config": None, "access_log": False,
            "server_header": False, "timeout_graceful_shutdown": int(drain_timeout),
            "limit_concurrency": server.connection_limit,
            "timeout_keep_alive": max(1, int(server.channel_timeout)),
            "h11_max_incomplete_event_size": server.max_request_header_size,
            "http": header_deadline_protocol(max(1.0, float(server.channel_timeout)),
                                             server.max_request_header_size),
            "ws": "none", "loop": "asyncio",
        }
        if server.trusted_proxy:
            options.update(proxy_headers=True, forwarded_allow_ips=server.trusted_proxy)
        else:
            options.update(proxy_headers=False)
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(target=self._run, name="zodbsession-uvicorn", daemon=True)
        self.error: BaseException | None = None

    @property
    def effective_port(self) -> int:
        """The port of the first socket: the one a caller asked for, or the one the system chose."""
        port: int = self.sockets[0].getsockname()[1]  # an (address, port) pair, typed Any
        return port

    def start(self) -> UvicornListener:
        """Run uvicorn in its thread; the application's lifespan startup runs there."""
        self._thread.start()
        return self

    def ready(self) -> bool:
        """Whether uvicorn is accepting connections."""
        return self.server.started

    def alive(self) -> bool:
        """Whether the server thread still runs (it ends early if the lifespan startup fails)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Ask uvicorn for its graceful shutdown, and wait for it."""
        self.server.should_exit = True
        self._thread.join()

    def _run(self) -> None:
        try:
            self.server.run(sockets=self.sockets)
        except BaseException as exc:  # SystemExit from a failed lifespan startup, included
            self.error = exc
            log.error("the ASGI server stopped: %s", exc or type(exc).__name__)


def header_deadline_protocol(deadline: float, max_header_size: int | None = None) -> type[Any]:
    """uvicorn's h11 protocol, with waitress's limits on a request's head.

    A connection that takes over *deadline* seconds to send its headers is
    closed. The clock starts when the connection opens, and again when a
    response is complete (the keep-alive wait for the next request); bytes
    that trickle in do not restart it, so a slowloris client cannot hold the
    connection by sending a header line now and then. A head (request line
    and headers) longer than *max_header_size* bytes is answered **431**
    and its connection closed, as waitress answers it, whatever the number
    of headers (h11 alone answers 400). Made on first use: uvicorn is an
    optional dependency.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer: Any = None
        _head = b""  # the current request's head so far, while its headers are not all in

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def data_received(self, data: bytes) -> None:
            if max_header_size is not None and self.conn.their_state is h11.IDLE:
                head = self._head + data
                end = head.find(b"\r\n\r\n")
                if (end if end != -1 else len(head)) > max_header_size:
                    self._refuse_head_too_large()
                    return
                self._head = head if end == -1 else b""
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm_header_deadline()  # the headers are in: the request runs
                self._head = b""

        def _refuse_head_too_large(self) -> None:
            body = b"Request Header Fields Too Large"
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                 b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            self._head = b""
            self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE:
                self._disarm_header_deadline()
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(deadline, self._headers_too_slow)

        def _disarm_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol
