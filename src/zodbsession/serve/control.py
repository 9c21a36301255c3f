"""The running server's control socket: the maintenance commands while ``serve`` holds the database.

An embedded FileStorage can be open in one process only, so while
``zodbsession serve`` runs, a maintenance command cannot open it. The server
therefore listens on a Unix socket beside the storage file
(``var/Data.fs.control`` for ``file://var/Data.fs``), and runs each command
there, on its own database and in its own connections, with the same
``zodbsession.ops.maintenance`` functions and so the same safety as offline:
short retried transactions, never a transaction held across a loop, and the
server's caches invalidated by its own commits. The command line sends the
command there when it finds the database locked and the socket answering.

Who may connect is decided by the file system: the socket is made with mode
0600, so only the server's own user (and root) can use it; there is no
token to leak. The protocol is HTTP/1.1 on the socket with JSON bodies
(``POST /<command>``), so ``curl --unix-socket var/Data.fs.control`` works too.

Threading: the listener is a waitress server on a socket map of its own, in
a thread of its own, so a flood on the application's port never reaches it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ZODB import DB

from zodbsession.core.db import file_paths
from zodbsession.core.errors import SessionNotFound, ZodbSessionError
from zodbsession.core.manager import SessionManager
from zodbsession.ops import maintenance

if TYPE_CHECKING:
    from zodbsession.config import StorageSettings

log = logging.getLogger(__name__)

#: What a storage file's control socket is called: the file's path plus this.
SOCKET_SUFFIX = ".control"
#: The largest command body accepted: commands carry a few arguments, never data.
MAX_BODY = 64 * 1024
#: How long a client waits for a command's answer (a pack of a large file takes long).
CLIENT_TIMEOUT = 3600.0

StartResponse = Callable[..., Any]
Command = Callable[[DB, SessionManager, dict[str, Any]], Any]


class ControlError(ZodbSessionError):
    """A command sent to a running server's control socket failed there; the message says why."""


def socket_path(storage_path: str) -> str:
    """The control socket of the FileStorage at *storage_path*."""
    return os.path.normpath(storage_path) + SOCKET_SUFFIX


def server_socket(storage: StorageSettings) -> str | None:
    """Where a server on *storage* listens for commands; None when it holds no FileStorage.

    A server holds every FileStorage among ``storage.uri`` and
    ``storage.sessions_uri`` (a command finds any of them locked), and
    listens beside the first: the main file, else the sessions file (the
    main database on ZEO or in memory). ``serve`` starts its listener here
    and the command line looks here, so that the two cannot disagree.
    """
    paths = file_paths(storage.uri, storage.sessions_uri)
    return socket_path(paths[0]) if paths else None


# -- the commands -------------------------------------------------------------


def _text(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is not None and not isinstance(value, str):
        raise ControlError(f"{key} must be a string, not {type(value).__name__}")
    return value


def _whole(args: dict[str, Any], key: str, default: int | None) -> int | None:
    value = args.get(key, default)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ControlError(f"{key} must be a whole number of at least 1, not {value!r}")
    return value


def _expire(db: DB, manager: SessionManager, args: dict[str, Any]) -> dict[str, Any]:
    batch_size = _whole(args, "batch_size", 500) or 500
    return {"removed": maintenance.expire_sessions(db, manager, batch_size=batch_size)}


def _pack(db: DB, manager: SessionManager, args: dict[str, Any]) -> dict[str, Any]:
    days = args.get("days", 0)
    if not isinstance(days, int | float) or isinstance(days, bool) or days < 0:
        raise ControlError(f"days must be a number of at least 0, not {days!r}")
    return maintenance.pack(db, days=float(days), database=_text(args, "database")).as_dict()


def _stats(db: DB, manager: SessionManager, args: dict[str, Any]) -> dict[str, Any]:
    return maintenance.stats(db, manager).as_dict()


def _ls(db: DB, manager: SessionManager, args: dict[str, Any]) -> list[dict[str, Any]]:
    infos = maintenance.list_sessions(db, manager, user=_text(args, "user"),
                                      limit=_whole(args, "limit", None))
    return [info.as_dict() for info in infos]


def _show(db: DB, manager: SessionManager, args: dict[str, Any]) -> dict[str, Any]:
    return maintenance.show_session(db, manager, _text(args, "session_id") or "").as_dict()


def _revoke(db: DB, manager: SessionManager, args: dict[str, Any]) -> dict[str, Any]:
    session_id, user = _text(args, "session_id"), _text(args, "user")
    if args.get("all") is True and session_id is None and user is None:
        return {"revoked": maintenance.revoke_all(db, manager)}
    if user is not None and session_id is None:
        return {"revoked": maintenance.revoke_user(db, manager, user)}
    if session_id is not None and user is None:
        return {"revoked": int(maintenance.revoke(db, manager, session_id))}
    raise ControlError("revoke takes exactly one of session_id, user or all")


COMMANDS: dict[str, Command] = {
    "expire": _expire,
    "pack": _pack,
    "stats": _stats,
    "ls": _ls,
    "show": _show,
    "revoke": _revoke,
}


# -- the server side ----------------------------------------------------------


class ControlApp:
    """The WSGI application behind the socket: ``POST /<command>`` with a JSON object of arguments.

    Answers 200 with the command's JSON result; 404 for an unknown command
    or session; 400 for a body that is not a JSON object or arguments the
    command refuses; 500, logged, for anything else. Never a traceback.
    """

    def __init__(self, db: DB, manager: SessionManager) -> None:
        self.db = db
        self.manager = manager

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        name = environ.get("PATH_INFO", "").strip("/")
        command = COMMANDS.get(name)
        if environ.get("REQUEST_METHOD") != "POST" or command is None:
            return _answer(start_response, "404 Not Found",
                           {"error": f"no command {name!r}; commands: {', '.join(COMMANDS)}"})
        try:
            args = _read_arguments(environ)
            result = command(self.db, self.manager, args)
        except SessionNotFound as exc:
            return _answer(start_response, "404 Not Found", {"error": str(exc), "kind": "not_found"})
        except ZodbSessionError as exc:
            return _answer(start_response, "400 Bad Request", {"error": str(exc)})
        except Exception as exc:
            log.exception("control command %s failed", name)
            return _answer(start_response, "500 Internal Server Error",
                           {"error": f"{name} failed in the server: {type(exc).__name__}: {exc}"})
        log.info("control command %s done", name)
        return _answer(start_response, "200 OK", {"result": result})


def _read_arguments(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ControlError("Content-Length is not a number") from None
    if not 0 <= length <= MAX_BODY:
        raise ControlError(f"the arguments are over {MAX_BODY} bytes")
    body = environ["wsgi.input"].read(length) if length else b"{}"
    try:
        args = json.loads(body)
    except (ValueError, RecursionError):
        raise ControlError("the arguments are not JSON") from None
    if not isinstance(args, dict):
        raise ControlError("the arguments must be a JSON object")
    return args


def _answer(start_response: StartResponse, status: str, payload: dict[str, Any]) -> list[bytes]:
    body = json.dumps(payload, default=str).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class ControlListener:
    """The control socket of a running server, served in a thread of its own.

    ``start()`` refuses a path where a live server already answers and
    replaces a stale socket file left by a killed one; ``stop()`` closes the
    listener and removes the file.
    """

    def __init__(self, db: DB, manager: SessionManager, path: str) -> None:
        self.path = path
        self.app = ControlApp(db, manager)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> ControlListener:
        from zodbsession.serve.waitress_server import create_server

        if os.path.exists(self.path):
            if answers(self.path):
                raise ControlError(f"{self.path}: another server already answers on this control socket")
            os.unlink(self.path)
        self._server = create_server(self.app, map={}, unix_socket=self.path, unix_socket_perms="600",
                                     threads=1, ident="zodbsession-control", expose_tracebacks=False)
        self._thread = threading.Thread(target=self._serve, name="zodbsession-control",
                                        daemon=True)
        self._thread.start()
        log.info("maintenance commands reach this server through %s", self.path)
        return self

    def _serve(self) -> None:
        # The loop, and closing its channels, stay in this thread: closing a
        # socket that another thread is polling makes that poll fail.
        server = self._server
        while not self._stopping.is_set():
            server.asyncore.loop(timeout=0.2, map=server._map, use_poll=True, count=1)
        for channel in list(server._map.values()):
            channel.close()
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)

    def stop(self) -> None:
        """Stop answering and remove the socket file; a command running now is cut off."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(10)
        self._thread = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# -- the client side ----------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def answers(path: str) -> bool:
    """Whether a server listens on the control socket at *path*."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def call(path: str, command: str, timeout: float = CLIENT_TIMEOUT, **args: Any) -> Any:
    """Run *command* in the server behind the socket at *path*; its JSON result.

    Raises ``SessionNotFound`` for an unknown session and ``ControlError``
    for any other refusal, with the server's one-line reason.
    """
    connection = _UnixConnection(path, timeout)
    try:
        body = json.dumps({k: v for k, v in args.items() if v is not None}).encode()
        connection.request("POST", f"/{command}", body=body,
                           headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        payload = json.loads(answer.read() or b"{}")
    except OSError as exc:
        raise ControlError(f"the server at {path} did not answer {command}: {exc}") from None
    except ValueError:
        raise ControlError(f"the server at {path} answered {command} with something not JSON") from None
    finally:
        connection.close()
    if answer.status == 200 and "result" in payload:
        return payload["result"]
    if payload.get("kind") == "not_found":
        raise SessionNotFound(payload.get("error", ""))
    raise ControlError(payload.get("error") or f"{command} answered {answer.status}")
