"""What ``config.include("zodbsession.pyramid")`` sets up: settings, database, manager, cookie, janitor.

The ``zodbsession.*`` keys of the Pyramid settings become a ``zodbsession.config.Settings``,
checked by the same rules as the TOML file's; ``ZodbSessions`` holds what they give, once per
application, as ``request.registry.zodbsession``, and hands each request its ZODB connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from pyramid.request import Request
from transaction.interfaces import NoTransaction
from ZODB import DB
from ZODB.Connection import Connection

from zodbsession.config import Settings, _build, cookie_policy
from zodbsession.core.db import close_at_exit
from zodbsession.core.errors import ConfigError
from zodbsession.core.locks import KeyedLocks
from zodbsession.core.manager import SessionManager
from zodbsession.ops.janitor import Janitor
from zodbsession.web.cookies import CookiePolicy

PREFIX = "zodbsession."

#: {ini key -> the ``Settings`` key it sets}; validated by ``zodbsession.config``.
INI_KEYS: dict[str, str] = {
    "zodbsession.uri": "storage.uri",
    "zodbsession.sessions_uri": "storage.sessions_uri",
    "zodbsession.pool_size": "storage.pool_size",
    "zodbsession.idle_timeout": "sessions.idle_timeout",
    "zodbsession.max_lifetime": "sessions.max_lifetime",
    "zodbsession.access_resolution": "sessions.access_resolution",
    "zodbsession.max_sessions": "sessions.max_sessions",
    "zodbsession.max_session_bytes": "sessions.max_session_bytes",
    "zodbsession.cookie_name": "cookie.name",
    "zodbsession.cookie_path": "cookie.path",
    "zodbsession.cookie_domain": "cookie.domain",
    "zodbsession.secure": "cookie.secure",
    "zodbsession.httponly": "cookie.httponly",
    "zodbsession.samesite": "cookie.samesite",
    "zodbsession.persistent": "cookie.persistent",
    "zodbsession.serialize_same_session": "publisher.serialize_same_session",
    "zodbsession.janitor_interval": "janitor.interval",
    "zodbsession.janitor_batch_size": "janitor.batch_size",
}
#: The one key of this adapter's own: the pyramid_zodbconn database holding the sessions.
DATABASE_KEY = "zodbsession.database"


def settings_from_pyramid(settings: Mapping[str, Any]) -> Settings:
    """The zodbsession ``Settings`` the ``zodbsession.*`` keys of a Pyramid settings dict give.

    Values may be the ini file's strings or typed Python values; both are
    checked by ``zodbsession.config``, exactly like the TOML file's. Raises
    ``ConfigError`` naming the ini key (``zodbsession.idle_timeout``), with a
    "did you mean" for a misspelt one.
    """
    source = "the Pyramid settings"
    data: dict[str, Any] = {}
    for key, value in settings.items():
        if not key.startswith(PREFIX) or key == DATABASE_KEY:
            continue
        if key not in INI_KEYS:
            match = difflib.get_close_matches(key, [*INI_KEYS, DATABASE_KEY], n=1, cutoff=0.6)
            hint = f"; did you mean {match[0]!r}?" if match else ""
            raise ConfigError(key, f"unknown setting{hint} (got {value!r} from {source})")
        data[INI_KEYS[key]] = value
    try:
        return _build([(source, data, True)])
    except ConfigError as exc:
        # Say it in the ini file's words: its key, and the keys the rule mentions.
        to_ini = {dotted: ini for ini, dotted in INI_KEYS.items()}
        problem = exc.problem
        for dotted, ini in to_ini.items():
            problem = problem.replace(dotted, ini)
        raise ConfigError(to_ini.get(exc.key, exc.key), problem) from None


class ZodbSessions:
    """What ``config.include("zodbsession.pyramid")`` set up; ``request.registry.zodbsession``.

    ``db`` is the database holding the sessions: zodbsession's own
    (``zodbsession.uri``) or pyramid_zodbconn's primary database, in which
    case ``database`` may name one of its named databases
    (``zodbconn.uri.<name>``). ``manager`` and ``cookie`` are built once from
    the settings.

    Threading: built at configuration time, read-only afterwards; every
    request thread shares it.
    """

    def __init__(self, settings: Settings, *, own_uri: bool, database: str | None) -> None:
        self.settings = settings
        manager = settings.session_manager()
        if database is not None:
            manager = dataclasses.replace(manager, database=database)
        self.manager: SessionManager = manager
        self.cookie: CookiePolicy = cookie_policy(settings)
        self.own_uri = own_uri
        # One lock per session id, so that one session's requests run one at a time here.
        options = settings.front_door_options()
        self.session_locks = (KeyedLocks(options.max_waiting_per_session, options.session_wait_timeout)
                              if options.serialize_same_session else None)
        self.db: DB | None = None
        self.zodbconn = False
        self.janitor: Janitor | None = None

    def open(self, registry: Any) -> None:
        """Open (or find pyramid_zodbconn's) database and make the session container once."""
        zodbconn_db = (getattr(registry, "_zodb_databases", None) or {}).get("")
        if zodbconn_db is not None and self.own_uri:
            raise ConfigError("zodbsession.uri", "pyramid_zodbconn is configured (zodbconn.uri), and "
                              "the sessions live in its database: remove zodbsession.uri, or keep "
                              "them apart with zodbconn.uri.sessions and zodbsession.database = sessions")
        if zodbconn_db is None and not self.own_uri:
            raise ConfigError("zodbsession.uri", "is not set: give the sessions a database "
                              "(zodbsession.uri = file://var/Data.fs, or memory:// for tests), "
                              "or configure pyramid_zodbconn (zodbconn.uri) to share the app's")
        if zodbconn_db is not None:
            self.db, self.zodbconn = zodbconn_db, True
            named = self.manager.database
            if named is not None and named not in zodbconn_db.databases:
                raise ConfigError(DATABASE_KEY, f"names no pyramid_zodbconn database (got {named!r}; "
                                  f"configured: {sorted(n for n in zodbconn_db.databases if n)})")
        else:
            if self.manager.database is not None and not self.settings.storage.sessions_uri:
                raise ConfigError(DATABASE_KEY, "names a pyramid_zodbconn database, and pyramid_zodbconn "
                                  "is not configured: with zodbsession.uri, give the sessions a "
                                  "database of their own with zodbsession.sessions_uri instead")
            self.db = self.settings.open_db()
        # pserve never closes the application's database: closed at exit, its
        # FileStorage writes its index (pyramid_zodbconn's as well).
        close_at_exit(self.db)
        # Made once here, so that concurrent first requests don't all create it.
        with self.db.transaction() as connection:
            self.manager.container(connection)

    def start_janitor(self) -> None:
        """Start the expiry sweep (``zodbsession.janitor_interval``; 0 turns it off)."""
        if self.janitor is None and self.db is not None:
            janitor = self.settings.janitor
            self.janitor = Janitor(self.db, self.manager, interval=janitor.interval,
                                   batch_size=janitor.batch_size).start()

    def close(self) -> None:
        """Stop the janitor and close zodbsession's own database (not pyramid_zodbconn's)."""
        if self.janitor is not None:
            self.janitor.stop()
            self.janitor = None
        if self.db is not None and not self.zodbconn:
            self.db.close()

    def connection(self, request: Request) -> Connection:
        """The request's ZODB connection, on ``request.tm``: pyramid_zodbconn's, or one of ours."""
        if self.zodbconn:
            import pyramid_zodbconn

            return pyramid_zodbconn.get_connection(request)
        connection = request.__dict__.get("_zodbsession_connection")
        if connection is not None:
            return connection
        connection = self.db.open(transaction_manager=request.tm)  # type: ignore[union-attr]
        request._zodbsession_connection = connection

        def close(_request: Request) -> None:
            with contextlib.suppress(NoTransaction):
                connection.transaction_manager.abort()
            connection.close()

        request.add_finished_callback(close)
        return connection
