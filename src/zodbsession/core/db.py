"""Opening a ``ZODB.DB`` from a storage URI, with errors a person can act on.

URIs are resolved by zodburi (``file://``, ``memory://``, ``zeo://``,
``zconfig://`` and RelStorage's ``sqlite://`` and ``postgres://`` where
RelStorage is installed). With ``sessions_uri`` the sessions get a database of
their own, joined to the main one as a ZODB multi-database so that one
transaction still spans both.

A ``zeo://`` URI gets two defaults that zodburi leaves to ClientStorage:
``wait_timeout`` (how long any storage call waits for a lost server to come
back before raising ``ClientDisconnected``) is ``ZEO_WAIT_TIMEOUT`` instead of
30 s, and ``server_sync=1`` makes each transaction begin with a round trip to
the server, so that a request sees what another process committed just before
it (read-your-writes when a load balancer alternates between app servers).
Both can be set in the URI: ``zeo://host:8100?wait_timeout=5&server_sync=0``.

A ``file://`` URI opens a ``GroupCommitFileStorage`` (``groupcommit``): the
stock FileStorage whose concurrent commits share fsyncs, durable when
acknowledged with *fsync* ``"always"`` (the default), synced every
*fsync_interval* seconds with ``"interval"``; its torn tail, if a power cut
left one, is cut off first (``tailrepair``). Blob and demo file URIs keep
the stock FileStorage.
``open_db(request_timeout=...)`` bounds each later wait for a server that is
connected but silent (``bound_zeo_calls``, at the end of this module).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import weakref
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode

import zc.lockfile
import zodburi
from ZODB import DB
from ZODB.FileStorage import FileStorage
from ZODB.POSException import ConflictError

from zodbsession.core.errors import DatabaseLocked, StorageUnavailable, StorageURIError
from zodbsession.core.groupcommit import FsyncPolicy
from zodbsession.core.private import make_private_directory, private_files, warn_if_shared
from zodbsession.core.relstorage_deadline import bound_relstorage_calls, with_connect_timeout
from zodbsession.core.tailrepair import open_repaired
from zodbsession.core.truncation import kept_truncations

#: Name of the main database in a multi-database.
MAIN_DATABASE = "main"
#: Name of the sessions' own database when ``sessions_uri`` is given.
SESSIONS_DATABASE = "sessions"

#: Tries to open a database whose root another process is creating at the same moment.
OPEN_ATTEMPTS = 3

#: Seconds a ZEO client waits for a lost server before a call fails (zeo:// default).
ZEO_WAIT_TIMEOUT = 10

#: Schemes whose storage lives inside one process: it cannot be shared by several.
EMBEDDED_SCHEMES = frozenset({"file", "memory", "demo"})


def open_db(
    uri: str = "file://var/Data.fs",
    *,
    sessions_uri: str | None = None,
    pool_size: int | None = None,
    read_only: bool = False,
    fsync: FsyncPolicy = "always",
    fsync_interval: float = 1.0,
    request_timeout: float = 0.0,
    **db_options: Any,
) -> DB:
    """Open the database a URI names; with *sessions_uri*, a multi-database.

    *pool_size* bounds the connections open at once (a request borrows one
    and gives it back); further keyword arguments go to ``ZODB.DB``. When
    *sessions_uri* is given, the returned DB is the main one and
    ``db.databases[SESSIONS_DATABASE]`` holds the sessions.

    *read_only* opens file:// storages read-only: no lock is taken, and a
    damaged file is not silently truncated on opening (what ``verify`` needs).

    Raises ``StorageURIError`` for a URI that cannot be resolved,
    ``DatabaseLocked`` for a FileStorage another process has open, and
    ``StorageUnavailable`` when a ZEO server does not answer within the
    URI's ``wait_timeout`` (so opening never waits longer than that).

    *fsync* and *fsync_interval* are the file:// storages' sync policy (see
    the module docstring); they apply to *sessions_uri* too.
    *request_timeout* (seconds, 0: none) bounds each later wait for a ZEO
    server that is connected but does not answer (``bound_zeo_calls``), and
    each statement RelStorage sends to PostgreSQL, and its connecting
    (``relstorage_deadline``).
    """
    if read_only:
        uri = _read_only(uri)
        sessions_uri = _read_only(sessions_uri) if sessions_uri else sessions_uri
    if pool_size is not None:
        db_options["pool_size"] = pool_size
    databases: dict[str, DB] = {}
    sync = {"fsync": fsync, "fsync_interval": fsync_interval}
    main = _open_one(uri, MAIN_DATABASE, databases, db_options, sync, request_timeout)
    if sessions_uri:
        try:
            _open_one(sessions_uri, SESSIONS_DATABASE, databases, db_options, sync, request_timeout)
        except BaseException:
            main.close()
            raise
    for database in databases.values():
        bound_zeo_calls(database.storage, request_timeout)
    close_at_exit(main)
    return main


def close_at_exit(db: DB) -> None:
    """Close *db* and its multi-database siblings when the interpreter exits, if nobody did.

    A FileStorage left open writes no index, so the next start logs "Ignoring
    index" and reads the whole file again. Servers that never close what the
    application opened (pserve, ``waitress-serve --call``) leave it to this,
    on Ctrl-C or a normal exit (not on a SIGTERM, which they do not handle).
    ``DB.close()`` is idempotent, and the weak reference keeps a database
    closed and dropped before collectable.
    """
    ref = weakref.ref(db)

    def close() -> None:
        database = ref()
        if database is not None:
            for each in set(database.databases.values()):
                with contextlib.suppress(Exception):
                    each.close()

    atexit.register(close)


def _open_one(
    uri: str, name: str, databases: dict[str, DB], db_options: dict[str, Any],
    sync: dict[str, Any], request_timeout: float = 0.0,
) -> DB:
    uri = with_connect_timeout(uri, request_timeout)
    factory, uri_options = resolve(uri)
    factory = _group_commit_factory(uri, sync) or factory
    options = {**uri_options, **db_options, "database_name": name, "databases": databases}
    _make_parent_directory(uri)
    path = file_path(uri)
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        # A new Data.fs, and its lock, index and tmp files: 0600; a torn tail
        # cut off on opening: one line, its copy in truncated/.
        with private_files(), (kept_truncations(path) if path and "read_only" not in uri
                               else contextlib.nullcontext()):
            storage = _open_storage(uri, factory)
        try:
            bound_relstorage_calls(storage, request_timeout)
            return DB(storage, **options)
        except ConflictError:
            # A shared storage opened for the first time by several processes
            # at once (workers): each tries to create the root; one wins.
            storage.close()
            databases.pop(name, None)
            if attempt == OPEN_ATTEMPTS:
                raise
        except Exception as exc:
            storage.close()
            if is_client_disconnected(exc):
                raise _unavailable(uri) from None
            raise
        except BaseException:
            # Without this, a DB that refuses its options left the storage open,
            # and a FileStorage locked, for the rest of the process.
            storage.close()
            raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _group_commit_factory(uri: str, sync: dict[str, Any]) -> Any:
    """A factory of the group-commit FileStorage for a plain file:// URI; None for any other."""
    if not uri.startswith("file://"):
        return None
    from zodburi.resolvers import FileStorageURIResolver

    path, _, query = uri[len("file://"):].partition("?")
    options, _ = FileStorageURIResolver().interpret_kwargs(dict(parse_qsl(query)))
    if "demostorage" in options or "blobstorage_dir" in options:
        return None
    options.pop("blobstorage_layout", None)
    path = os.path.normpath(path)
    return lambda: open_repaired(path, **options, **sync)


def _open_storage(uri: str, factory: Any) -> Any:
    try:
        return factory()
    except zc.lockfile.LockError:
        raise DatabaseLocked(
            f"{_file_path(uri)} is in use by another process (a server or a script "
            "holds its lock). Stop that process first, or run the command against "
            "the live database through ZEO (a zeo:// URI)."
        ) from None
    except FileNotFoundError as exc:
        raise StorageURIError(f"{uri}: {exc.strerror}: {exc.filename}") from None
    except PermissionError as exc:
        # A FileStorage writes its lock, index and temporary files beside the data file.
        raise StorageURIError(
            f"{uri}: cannot write {exc.filename or 'beside the file'}: {exc.strerror}; make "
            f"{os.path.dirname(os.path.abspath(_file_path(uri) or '.'))} writable by this user, or "
            "point the URI at a directory that can be written") from None
    except Exception as exc:
        if is_client_disconnected(exc):
            raise _unavailable(uri) from None
        if is_embedded(uri):
            raise
        # A database server that refuses us (RelStorage: no server, a bad
        # password, a missing database) is one line, not a driver traceback.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StorageUnavailable(f"{redact_uri(uri)}: cannot open the storage: "
                                 f"{type(exc).__name__}: {reason}") from None


def redact_uri(uri: str) -> str:
    """*uri* with its password, if any, replaced by ``***``: fit for logs and messages."""
    return _PASSWORD_QUERY.sub(r"\1***", _PASSWORD_USERINFO.sub(r"\1:***@", uri))


_PASSWORD_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:?#]*):[^@/?#]*@")
_PASSWORD_QUERY = re.compile(r"([?&]password=)[^&#]*")


def is_embedded(uri: str) -> bool:
    """Whether *uri* names a storage that lives in one process (file, memory, demo)."""
    return uri.partition(":")[0] in EMBEDDED_SCHEMES


def resolve(uri: str) -> tuple[Any, dict[str, Any]]:
    """``(storage factory, ZODB.DB keywords)`` for *uri*, opening nothing.

    Raises ``StorageURIError`` naming the problem; zeo:// URIs get this
    module's defaults (see the module docstring).
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise StorageURIError(f"{uri!r} is not a storage URI (expected e.g. file://var/Data.fs)")
    shown = redact_uri(uri)
    try:
        if uri.startswith("zeo://"):
            return _resolve_zeo(uri)
        return cast("tuple[Any, dict[str, Any]]", zodburi.resolve_uri(uri))
    except zodburi.NoResolverForScheme:
        scheme = uri.split(":", 1)[0]
        raise StorageURIError(
            f"{shown}: unknown storage scheme {scheme!r} (use file, memory, zeo, zconfig, "
            "or with RelStorage installed sqlite, postgres, mysql)"
        ) from None
    except KeyError as exc:
        # str() of a KeyError is the repr of its message, quotes and all.
        reason = exc.args[0] if exc.args else exc
        raise StorageURIError(f"{shown}: {reason}") from None
    except (ValueError, TypeError) as exc:
        raise StorageURIError(f"{shown}: {exc}") from None


def _zeo_resolver() -> Any:
    """zodburi's zeo:// resolver, also passing ``server_sync`` (zodburi 3 rejects it).

    Made on first use: zodburi's resolvers import ZEO's client, which a
    process on a FileStorage never needs.
    """
    from zodburi.resolvers import ClientStorageURIResolver

    class _ZEOResolver(ClientStorageURIResolver):  # type: ignore[misc]
        _int_args = (*ClientStorageURIResolver._int_args, "server_sync")

    return _ZEOResolver()


def is_client_disconnected(exc: BaseException) -> bool:
    """Whether *exc* is ZEO's ``ClientDisconnected``, told by name so that ZEO need not be imported."""
    return any(f"{k.__module__}.{k.__qualname__}" == "ZEO.Exceptions.ClientDisconnected"
               for k in type(exc).__mro__)


def _resolve_zeo(uri: str) -> tuple[Any, dict[str, Any]]:
    base, _, query = uri.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    server_sync = params.pop("server_sync", "1")
    params.setdefault("wait_timeout", str(ZEO_WAIT_TIMEOUT))
    stock = f"{base}?{urlencode(params)}"
    # The stock resolver checks the URI and converts the DB keywords; ours
    # builds the same ClientStorage, plus server_sync.
    _, db_options = zodburi.resolve_uri(stock)
    if not params["wait_timeout"].isdigit() or int(params["wait_timeout"]) < 1:
        # ClientStorage reads 0 as "the default, 30 s".
        raise ValueError(f"wait_timeout must be a whole number of seconds, at least 1 "
                         f"(got {params['wait_timeout']!r})")
    if server_sync not in ("0", "1"):
        raise ValueError(f"server_sync must be 0 or 1 (got {server_sync!r})")
    factory, _ = _zeo_resolver()(f"{stock}&server_sync={server_sync}")
    return factory, db_options


def zeo_wait_timeout(uri: str) -> int | None:
    """The seconds a zeo:// URI's client waits for its server; None for other URIs."""
    if not uri.startswith("zeo://"):
        return None
    params = dict(parse_qsl(uri.partition("?")[2]))
    value = params.get("wait_timeout", "")
    return int(value) if value.isdigit() else ZEO_WAIT_TIMEOUT


def _unavailable(uri: str) -> StorageUnavailable:
    return StorageUnavailable(
        f"{redact_uri(uri)}: no ZEO server answered within {zeo_wait_timeout(uri)} s; start it with "
        "`zodbsession zeo`, or check the address (and the URI's wait_timeout)"
    )


def open_file_storage(path: str, *, read_only: bool = False, fsync: FsyncPolicy = "always",
                      fsync_interval: float = 1.0) -> FileStorage:
    """Open a group-commit FileStorage at *path*, making its directory; ``DatabaseLocked`` if held.

    A new directory is made 0700 and a new file 0600 (``core.private``); a
    tail FileStorage cuts off on opening is kept in ``truncated/``.
    """
    make_private_directory(os.path.dirname(os.path.abspath(path)))
    warn_if_shared(path)
    try:
        with private_files(), (contextlib.nullcontext() if read_only else kept_truncations(path)):
            return open_repaired(path, read_only=read_only, fsync=fsync, fsync_interval=fsync_interval)
    except zc.lockfile.LockError:
        raise DatabaseLocked(
            f"{os.path.normpath(path)} is in use by another process (a server or a script "
            "holds its lock). Stop that process first."
        ) from None


def _read_only(uri: str) -> str:
    if not uri.startswith("file://"):
        return uri
    return uri + ("&" if "?" in uri else "?") + "read_only=1"


def file_path(uri: str) -> str | None:
    """The FileStorage path a file:// URI names; None for every other URI (and for "")."""
    if not uri.startswith("file://"):
        return None
    return os.path.normpath(uri[len("file://") :].split("?", 1)[0])


_file_path = file_path


def file_paths(*uris: str) -> list[str]:
    """The FileStorage paths among *uris*, in their order (empty URIs and other schemes skipped)."""
    return [path for path in map(file_path, uris) if path is not None]


def _make_parent_directory(uri: str) -> None:
    path = _file_path(uri)
    if not path:
        return
    warn_if_shared(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        make_private_directory(directory)
    except OSError as exc:
        raise StorageURIError(
            f"{uri}: cannot create the directory {directory}: {exc.strerror or exc}; create it "
            "(writable by this user) or point the URI at a directory that can be written") from None


@contextlib.contextmanager
def file_locks(*uris: str) -> Iterator[None]:
    """Hold the lock of every FileStorage among *uris* (others are ignored), or refuse.

    A read-only FileStorage takes no lock, so a reader (``verify``) would
    read a file that a running server keeps appending to and report a torn
    last transaction as damage. Holding the writers' lock meanwhile makes
    such a reader refuse a file in use, and keeps a server from opening it
    until the reader is done. Raises ``DatabaseLocked`` naming the file.
    """
    with contextlib.ExitStack() as stack:
        for path in file_paths(*uris):
            if not os.path.exists(path):
                continue
            try:
                lock = zc.lockfile.LockFile(path + ".lock")
            except zc.lockfile.LockError:
                raise DatabaseLocked(
                    f"{path} is in use by another process (a server or a script holds its lock). "
                    "Stop that process first, or verify a copy (a backup made with repozo, or the "
                    "file copied after a pack) or the live database where the ZEO server runs."
                ) from None
            stack.callback(lock.close)
        yield

# -- a deadline on each wait for a ZEO server (storage.request_timeout) --------------
#
# A deadline on each wait for the storage server: a frozen server gives a bounded 503.
#
# A ZEO client notices a server that went away (the connection drops) and
# then waits at most the URI's ``wait_timeout``. A server that is still
# connected but does not answer (a stopped process, SIGSTOP, a machine
# swapping to death) is not noticed at all: each call waits for its reply
# without end, and so does every request, cookieless ones included, and the
# thread pool fills up.
#
# ``bound_zeo_calls`` puts a deadline on every synchronous call a ZEO client
# makes for a request (the round trip at ``begin``, loads, the vote, the miss
# path's ``lastTransaction``): past *timeout* seconds without a reply the
# call raises ZEO's own ``ClientDisconnected``, which the front doors answer
# 503 with ``Retry-After`` (the ``storage_unavailable`` row), nothing
# committed. The reply, if it ever comes, is taken by ZEO's I/O thread and
# dropped; the next request uses the connection as before, so service is back
# the moment the server answers again. The one call left unbounded is
# ``tpc_finish``: once it is sent the transaction may be committed, and giving
# up on it would only turn a slow commit into an unknown one.
#
# RelStorage waits in its database driver: ``relstorage_deadline`` bounds each
# statement it sends to PostgreSQL, and its connecting, with the same timeout.

#: Coroutines of ZEO's client that are never bounded (see above).
UNBOUNDED = frozenset({"tpc_finish_co", "close_co"})


def bound_zeo_calls(storage: Any, timeout: float) -> bool:
    """Give the ZEO ``ClientStorage`` *storage* a deadline of *timeout* seconds per call.

    Returns whether it did (False for another storage, or *timeout* <= 0).
    """
    kind = type(storage)
    if timeout <= 0 or not (kind.__module__ == "ZEO.ClientStorage" and kind.__name__ == "ClientStorage"):
        return False
    runner = storage._server
    io_call = runner.io_call
    if getattr(io_call, "zodbsession_deadline", None) is not None:
        return True
    from ZEO.Exceptions import ClientDisconnected

    def bounded_io_call(coro: Any, wait: bool = True) -> Any:
        name = getattr(getattr(coro, "cr_code", None), "co_name", "")
        if not wait or name in UNBOUNDED:
            return io_call(coro, wait)
        future = io_call(coro, wait=False)
        try:
            return future.result(timeout)
        except TimeoutError:
            raise ClientDisconnected(
                f"the storage server did not answer within {timeout:g} s (storage.request_timeout); "
                "it may be frozen or overloaded") from None
        finally:
            del future

    bounded_io_call.zodbsession_deadline = timeout  # type: ignore[attr-defined]
    runner.io_call = bounded_io_call
    return True
