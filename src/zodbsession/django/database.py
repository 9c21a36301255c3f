"""Where Django sessions are read and written: the request's transaction, or one of their own.

Every operation of the session backend is a small function of a connection.
``run`` decides which connection and which transaction it gets:

================================================  ==========================================
where the operation runs                          connection and transaction
================================================  ==========================================
inside a ``SessionPublisher`` request (the         the request's (``zodbsession.core.registry``): the
Django WSGI app wrapped by it, ``serve --app``)    session commits or aborts with the app's data
anywhere else (``runserver``, gunicorn without     a pooled connection with a transaction manager
the publisher, the test client, management        of its own, committed at once (retried on a
commands)                                          conflict), closed afterwards
================================================  ==========================================

Outside a request the database comes from ``use_database(db, manager)``
(what ``on_start`` does under ``zodbsession serve``) or, failing that, is
opened once per process from the Django settings:

- ``ZODBSESSION_URI``: a storage URI (``memory://`` for tests,
  ``file://var/Data.fs``, ``zeo://...``); it replaces the ``[storage]``
  URIs of the TOML file, whose other settings still apply;
- ``ZODBSESSION_CONFIG``: the TOML file to read (default
  ``conf/zodbsession.toml`` when it exists, as for ``zodbsession serve``).

Changing either setting (``override_settings`` in tests) closes the
database opened from the old values; the next operation opens the new one.
"""

from __future__ import annotations

import atexit
import dataclasses
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import transaction
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from ZODB import DB
from ZODB.Connection import Connection

from zodbsession.config import Settings, load_settings
from zodbsession.core.db import SESSIONS_DATABASE
from zodbsession.core.errors import ConfigError
from zodbsession.core.manager import SessionManager
from zodbsession.core.registry import registry
from zodbsession.core.work import connection, in_transaction

T = TypeVar("T")

#: The Django settings this module reads.
URI_SETTING = "ZODBSESSION_URI"
CONFIG_SETTING = "ZODBSESSION_CONFIG"


# Django ships no types: mypy sees its base class as Any.
class ImproperlyConfiguredStorage(ConfigError, ImproperlyConfigured):  # type: ignore[misc]
    """``ZODBSESSION_URI`` or ``ZODBSESSION_CONFIG`` is wrong; Django reports it as misconfiguration."""


@dataclasses.dataclass
class _Database:
    db: DB
    manager: SessionManager
    owned: bool  # opened here from the settings, so closed here too


_lock = threading.Lock()
_current: _Database | None = None
_manager: SessionManager | None = None  # for operations inside a request, which open nothing


def use_database(db: DB, manager: SessionManager | None = None) -> None:
    """Make *db* the database Django sessions use outside a request, in this process.

    *manager* supplies the limits (``max_sessions``, ``max_session_bytes``)
    and the sweep ``clear_expired`` runs; None: one with the defaults. The
    database stays the caller's to close.
    """
    global _current, _manager
    with _lock:
        _close_owned()
        manager = _matching(manager or SessionManager(), db)
        _current = _Database(db, manager, owned=False)
        _manager = manager


def on_start(db: DB, manager: SessionManager) -> None:
    """``server.on_start`` hook: Django sessions outside a request use the server's database.

    Set ``on_start = "zodbsession.django:on_start"`` in ``[server]`` so that
    a management command run *inside* the server process, or a thread of the
    app that is not serving a request, does not try to open a FileStorage
    the server already holds.
    """
    use_database(db, manager)


def close_database() -> None:
    """Close the database opened from the settings; forget (not close) a ``use_database`` one."""
    global _current, _manager
    with _lock:
        _close_owned()


def run(unit: Callable[[Connection, SessionManager], T], *, write: bool) -> T:
    """Run ``unit(connection, manager)`` in the request's transaction or in a short one of its own.

    Joined, nothing is committed here: the publisher commits or aborts the
    whole request. Alone, a write commits before ``run`` returns and a
    conflict re-runs *unit* in a fresh transaction; a read is aborted.
    """
    if registry.has():
        conn = registry.connection
        return unit(conn, _joined_manager(conn))
    current = _database()
    # Not work.connection(): that empties the connection's cache for the
    # maintenance walks, and a session backend reads the same container
    # buckets on every request.
    conn = current.db.open(transaction.TransactionManager(explicit=True))
    try:
        return in_transaction(conn, partial(unit, conn, current.manager), write=write,
                              name="the Django session backend")
    finally:
        conn.close()


def expire() -> int:
    """Remove every expired session, in the janitor's short batches; returns how many.

    It always commits batches of its own (never the request's transaction),
    on the database the backend uses outside a request, or inside one on
    the request's database.
    """
    if registry.has():
        conn = registry.connection
        db, manager = conn.db(), _joined_manager(conn)
    else:
        current = _database()
        db, manager = current.db, current.manager
    with connection(db) as conn:
        return manager.expire(conn)


def database() -> tuple[DB, SessionManager]:
    """The database (and manager) used outside a request, opened now if need be."""
    current = _database()
    return current.db, current.manager


def sessions_connection(conn: Connection) -> Connection:
    """The connection of the database holding the sessions: *conn*, or its ``sessions`` sibling."""
    if SESSIONS_DATABASE in conn.db().databases:
        return conn.get_connection(SESSIONS_DATABASE)
    return conn


# -- opening from the Django settings -------------------------------------------


def _database() -> _Database:
    global _current, _manager
    with _lock:
        if _current is None:
            settings = _settings()
            try:
                db = settings.open_db()
            except ConfigError as exc:
                raise ImproperlyConfiguredStorage(exc.key, exc.problem) from None
            _current = _Database(db, _matching(settings.session_manager(), db), owned=True)
            _manager = _current.manager
        return _current


def _joined_manager(conn: Connection) -> SessionManager:
    """The manager for an operation inside a request: from the settings, opening nothing."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = _settings().session_manager()
        return _matching(_manager, conn.db())


def _settings() -> Settings:
    from django.conf import settings as django_settings

    uri = getattr(django_settings, URI_SETTING, None)
    path = getattr(django_settings, CONFIG_SETTING, None)
    overrides: dict[str, Any] = {}
    if uri is not None:
        if not isinstance(uri, str) or "://" not in uri:
            raise ImproperlyConfiguredStorage(
                URI_SETTING, f"must be a storage URI such as 'memory://' or 'file://var/Data.fs' "
                f"(got {uri!r} from the Django settings)")
        overrides = {"storage.uri": uri, "storage.sessions_uri": ""}
    try:
        return load_settings(path, overrides=overrides, overrides_source=f"Django's {URI_SETTING}")
    except ConfigError as exc:
        raise ImproperlyConfiguredStorage(exc.key, exc.problem) from None


def _matching(manager: SessionManager, db: DB) -> SessionManager:
    """*manager*, looking for the sessions where *db* keeps them."""
    database = SESSIONS_DATABASE if SESSIONS_DATABASE in db.databases else None
    if manager.database == database:
        return manager
    return dataclasses.replace(manager, database=database)


def _close_owned() -> None:
    """With ``_lock`` held: forget the current database, closing it if it was opened here."""
    global _current, _manager
    current, _current, _manager = _current, None, None
    if current is not None and current.owned:
        for db in set(current.db.databases.values()):
            db.close()


def _on_setting_changed(*, setting: str, **_kwargs: Any) -> None:
    if setting in (URI_SETTING, CONFIG_SETTING):
        close_database()


setting_changed.connect(_on_setting_changed, dispatch_uid="zodbsession.django.database")
atexit.register(close_database)
