"""Opening a ``ZODB.DB`` from a storage URI, with errors a person can act on.

URIs are resolved by zodburi (``file://``, ``memory://``, ``zeo://``,
``zconfig://`` and RelStorage's schemes where RelStorage is installed). With
``sessions_uri`` the sessions get a database of their own, joined to the main
one as a ZODB multi-database so that one transaction still spans both.
"""

from __future__ import annotations

import os
from typing import Any

import zc.lockfile
import zodburi
from ZODB import DB

from zodbsession.errors import DatabaseLocked, StorageURIError

#: Name of the main database in a multi-database.
MAIN_DATABASE = "main"
#: Name of the sessions' own database when ``sessions_uri`` is given.
SESSIONS_DATABASE = "sessions"


def open_db(
    uri: str = "file://var/Data.fs",
    *,
    sessions_uri: str | None = None,
    pool_size: int | None = None,
    read_only: bool = False,
    **db_options: Any,
) -> DB:
    """Open the database a URI names; with *sessions_uri*, a multi-database.

    *pool_size* bounds the connections open at once (a request borrows one
    and gives it back); further keyword arguments go to ``ZODB.DB``. When
    *sessions_uri* is given, the returned DB is the main one and
    ``db.databases[SESSIONS_DATABASE]`` holds the sessions.

    *read_only* opens file:// storages read-only: no lock is taken, and a
    damaged file is not silently truncated on opening (what ``verify`` needs).

    Raises ``StorageURIError`` for a URI that cannot be resolved and
    ``DatabaseLocked`` for a FileStorage another process has open.
    """
    if read_only:
        uri = _read_only(uri)
        sessions_uri = _read_only(sessions_uri) if sessions_uri else sessions_uri
    if pool_size is not None:
        db_options["pool_size"] = pool_size
    databases: dict[str, DB] = {}
    main = _open_one(uri, MAIN_DATABASE, databases, db_options)
    if sessions_uri:
        try:
            _open_one(sessions_uri, SESSIONS_DATABASE, databases, db_options)
        except BaseException:
            main.close()
            raise
    return main


def _open_one(
    uri: str, name: str, databases: dict[str, DB], db_options: dict[str, Any]
) -> DB:
    factory, uri_options = _resolve(uri)
    options = {**uri_options, **db_options, "database_name": name, "databases": databases}
    _make_parent_directory(uri)
    try:
        storage = factory()
    except zc.lockfile.LockError:
        raise DatabaseLocked(
            f"{_file_path(uri)} is in use by another process (a server or a script "
            "holds its lock). Stop that process first, or run the command against "
            "the live database through ZEO (a zeo:// URI)."
        ) from None
    except FileNotFoundError as exc:
        raise StorageURIError(f"{uri}: {exc.strerror}: {exc.filename}") from None
    try:
        return DB(storage, **options)
    except BaseException:
        # Without this, a DB that refuses its options left the storage open,
        # and a FileStorage locked, for the rest of the process.
        storage.close()
        raise


def _resolve(uri: str) -> tuple[Any, dict[str, Any]]:
    if not isinstance(uri, str) or "://" not in uri:
        raise StorageURIError(f"{uri!r} is not a storage URI (expected e.g. file://var/Data.fs)")
    try:
        return zodburi.resolve_uri(uri)
    except zodburi.NoResolverForScheme:
        scheme = uri.split(":", 1)[0]
        raise StorageURIError(
            f"{uri}: unknown storage scheme {scheme!r} (use file, memory, zeo or zconfig; "
            "RelStorage's schemes need RelStorage installed)"
        ) from None
    except KeyError as exc:
        # str() of a KeyError is the repr of its message, quotes and all.
        raise StorageURIError(f"{uri}: {exc.args[0] if exc.args else exc}") from None
    except (ValueError, TypeError) as exc:
        raise StorageURIError(f"{uri}: {exc}") from None


def _read_only(uri: str) -> str:
    if not uri.startswith("file://"):
        return uri
    return uri + ("&" if "?" in uri else "?") + "read_only=1"


def _file_path(uri: str) -> str | None:
    if not uri.startswith("file://"):
        return None
    return os.path.normpath(uri[len("file://") :].split("?", 1)[0])


def _make_parent_directory(uri: str) -> None:
    path = _file_path(uri)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
