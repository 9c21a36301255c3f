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
            "http": "h11", "ws": "none", "loop": "asyncio",
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
