"""``zodbsession zeo``: ZEO's own storage server for the configured FileStorage(s).

Several app server processes (or machines) share one session database
through a ZEO server: it owns the FileStorage, and each app server is a ZEO
client (``storage.uri = "zeo://"``, the [zeo] address). This module runs ZEO's
``StorageServer`` on the [zeo] settings; it writes no server of its own.

By default it listens on a Unix socket in ``var/`` (``var/zeo.sock``) made
with mode 0700 in a 0700 directory: only its own user can connect. ZEO has no
authentication, and whoever can connect can store a pickle that the app
servers will unpickle, i.e. run code in them; a TCP address is therefore
logged with a WARNING saying how to close it.

The main FileStorage is served under ZEO's default storage name ``"1"``, so a
plain ``zeo://host:port`` URI reaches it; a separate sessions FileStorage
(``zeo.sessions_storage``) is served as ``"sessions"``, for
``storage.sessions_uri = "zeo://host:port?storage=sessions"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ZEO.StorageServer import StorageServer

from zodbsession.config import Address, parse_address
from zodbsession.core.db import open_file_storage
from zodbsession.core.errors import ConfigError
from zodbsession.core.private import SHARED_BITS

if TYPE_CHECKING:
    from zodbsession.config import Settings

__all__ = ["Address", "client_uri", "describe", "parse_address", "run_zeo", "stop_in_loop"]

log = logging.getLogger(__name__)

#: ZEO's default storage name: the one a ``zeo://host:port`` URI asks for.
MAIN_STORAGE = "1"
#: The storage name of ``zeo.sessions_storage``: ``zeo://host:port?storage=sessions``.
SESSIONS_STORAGE = "sessions"
#: Seconds a client may hold the commit lock (between its vote and its finish)
#: before the server drops it; without it one stuck client stalls every commit.
TRANSACTION_TIMEOUT = 30.0

def client_uri(address: Address, storage: str = MAIN_STORAGE) -> str:
    """The zeo:// URI with which a client reaches *storage* at *address*."""
    if isinstance(address, str):
        base = f"zeo://{os.path.abspath(address)}"  # zodburi needs an absolute socket path
    else:
        host, port = address
        base = f"zeo://[{host}]:{port}" if ":" in host else f"zeo://{host}:{port}"
    return base if storage == MAIN_STORAGE else f"{base}?storage={storage}"


def describe(address: Address) -> str:
    """An address as a person writes it."""
    if isinstance(address, str):
        return address
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_zeo(settings: Settings, *, on_ready: Callable[[StorageServer], None] | None = None) -> None:
    """Serve the [zeo] FileStorage(s) until SIGTERM or Ctrl-C, then close them cleanly.

    Start-up fails with ``ConfigError`` (naming ``zeo.address``) when the
    address is taken, and with ``DatabaseLocked`` when another process holds
    a FileStorage. Stopping closes every client connection first, which
    aborts any commit in progress on the server (its client sees
    ``ClientDisconnected``), and then the storages, so the files stay whole.
    """
    address = parse_address(settings.zeo.address)
    _clear_stale_socket(address)
    paths = [settings.zeo.storage, settings.zeo.sessions_storage]
    missing = [os.path.abspath(path) for path in paths if path and not os.path.exists(path)]
    storages = _open_storages(settings)
    for path in missing:  # only serve and zeo create databases, and they say so
        log.info("created a new, empty database at %s", path)
    try:
        server = _create_server(address, storages)
    except BaseException:
        for storage in storages.values():
            storage.close()
        raise
    try:
        served = ", ".join(
            f"storage {name!r} = {storage.getName()} ({client_uri(address, name)})"
            for name, storage in storages.items()
        )
        log.info("ZEO server listening on %s (pid %d): %s", describe(address), os.getpid(), served)
        if not isinstance(address, str):
            log.warning("ZEO listens on TCP %s: any process that can connect can store pickles the "
                        "app servers will run; keep it on a private network or use ZEO's TLS with "
                        "client certificates (docs/operating.md, 'Who can reach the storage')",
                        describe(address))
        loop = server.acceptor.event_loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, server, sig)
        if on_ready is not None:
            on_ready(server)
        server.loop()
    finally:
        server.close()  # closes the storages, after the connections are gone
        _clear_stale_socket(address, only_ours=True)
    log.info("ZEO server stopped; storages closed")


def _open_storages(settings: Settings) -> dict[str, Any]:
    # The group-commit FileStorage, with the [storage] fsync policy. ZEO's own
    # lock manager still commits one transaction at a time per storage, so
    # here it keeps visibility-after-sync and the torn-tail repair, not the sharing.
    sync: dict[str, Any] = {"fsync": settings.storage.fsync,
                            "fsync_interval": settings.storage.fsync_interval}
    storages = {MAIN_STORAGE: open_file_storage(settings.zeo.storage, **sync)}
    if settings.zeo.sessions_storage:
        try:
            storages[SESSIONS_STORAGE] = open_file_storage(settings.zeo.sessions_storage, **sync)
        except BaseException:
            storages[MAIN_STORAGE].close()
            raise
    return storages


def _create_server(address: Address, storages: dict[str, Any]) -> StorageServer:
    previous = os.umask(SHARED_BITS)  # a Unix socket only this user can connect to
    os.umask(previous | SHARED_BITS)
    try:
        return _bind(address, storages)
    finally:
        os.umask(previous)


def _bind(address: Address, storages: dict[str, Any]) -> StorageServer:
    try:
        return StorageServer(address, storages, transaction_timeout=TRANSACTION_TIMEOUT)
    except OSError as exc:
        _close_abandoned_loops(exc)
        raise ConfigError(
            "zeo.address", f"cannot listen on {describe(address)}: {exc.strerror or exc} "
            "(is another ZEO server running there?)"
        ) from None


def _close_abandoned_loops(exc: BaseException) -> None:
    """Close the event loop ZEO's ``Acceptor`` made before its bind failed.

    ZEO keeps no reference to it once ``StorageServer()`` raises; left open,
    the garbage collector closes it at exit, after its self-pipe socket was
    already collected, and prints "Exception ignored in BaseEventLoop.__del__
    ... Invalid file descriptor: -1" after our one line. The loop is still a
    local of the failed frames, which the traceback holds.
    """
    traceback = exc.__traceback__
    while traceback is not None:
        for value in list(traceback.tb_frame.f_locals.values()):
            if isinstance(value, asyncio.AbstractEventLoop) and not value.is_closed() \
                    and not value.is_running():
                value.close()
        traceback = traceback.tb_next


def _on_signal(server: StorageServer, sig: int) -> None:
    log.info("%s received: closing the ZEO server", signal.Signals(sig).name)
    stop_in_loop(server)


def stop_in_loop(server: StorageServer) -> None:
    """Run in the server's event loop: drop the clients, then stop accepting and end the loop.

    The order matters: ``StorageServer.close()`` only schedules the client
    connections' closing, and the loop may stop before that runs; a client
    in the same process then waits forever on a socket nobody serves.
    Afterwards (once ``server.loop()`` returned) ``server.close()`` closes
    the storages.
    """
    for zeo_storages in server.zeo_storages_by_storage_id.values():
        for zeo_storage in list(zeo_storages):
            zeo_storage.connection.close()
    server.acceptor.close()


def _clear_stale_socket(address: Address, *, only_ours: bool = False) -> None:
    """Remove a Unix socket file nobody listens on (a crashed server's), or refuse."""
    if not isinstance(address, str) or not os.path.exists(address):
        return
    if not only_ours:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(address)
            except OSError:
                pass  # nobody there: a stale file
            else:
                raise ConfigError("zeo.address", f"{address} is in use by a running server")
    with contextlib.suppress(OSError):
        os.unlink(address)
