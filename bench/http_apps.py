"""The counter application of ``bench --http``, once per contender, for a real server.

Every contender serves the same ``counter_app`` (``POST /count`` increments
the session's count and answers it, ``GET /count`` answers it) on waitress
with 8 threads; only the session layer differs. Each factory here builds one
contender's WSGI application from the environment (``BENCH_WORKDIR`` for
files, ``BENCH_REDIS_URL`` for Redis) and is served by ``bench.http_serve``;
zodbsession's own is served by ``zodbsession serve --app``, with its defaults.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.contenders import COOKIE, PlainZODB, _cookie_value, _with_cookie
from bench.populate import populate_plain
from bench.workload import WSGIApp, counter_app
from zodbsession.core.session import new_session_id


def _workdir() -> Path:
    return Path(os.environ["BENCH_WORKDIR"])


def bare() -> WSGIApp:
    """Sessions in a dict in memory, one per cookie: no persistence, the upper bound."""
    sessions: dict[str, dict[str, int]] = {}
    inner = counter_app("bench.session")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        session_id = _cookie_value(environ)
        session = sessions.get(session_id) if session_id else None
        new_id = None
        if session is None:
            new_id = new_session_id()
            session = sessions[new_id] = {}
        environ["bench.session"] = session
        return inner(environ, _with_cookie(start_response, new_id))

    return app


def plain_zodb() -> WSGIApp:
    """The hand-rolled floor: an ``OOBTree`` of ``PersistentMapping``, a commit per write."""
    contender = PlainZODB(_workdir(), 0, populate=False)
    populate_plain(contender.db, 0)
    return contender.app


def zodbsession_counter(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """The bare counter, for ``zodbsession serve --app bench.http_apps:zodbsession_counter``.

    ``GET /_counts`` answers the storages' fsyncs and commits as JSON (0 for a
    storage that does not count them, as a ZEO client or RelStorage).
    """
    if environ.get("PATH_INFO") == "/_counts":
        from zodbsession import current_connection

        storages = [db.storage for db in current_connection.db().databases.values()]
        body = json.dumps({"fsyncs": sum(getattr(s, "fsyncs", 0) for s in storages),
                           "commits": sum(getattr(s, "commits", 0) for s in storages)}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return _zodbsession_inner(environ, start_response)


_zodbsession_inner = counter_app("zodbsession.session")


def _beaker(options: dict[str, str]) -> WSGIApp:
    from beaker.middleware import SessionMiddleware

    return SessionMiddleware(counter_app("beaker.session", explicit_save=True),
                             {"session.key": COOKIE, **options})


def beaker_redis() -> WSGIApp:
    """Beaker's ``SessionMiddleware`` on Redis (``ext:redis``), its defaults otherwise."""
    return _beaker({"session.type": "ext:redis", "session.url": os.environ["BENCH_REDIS_URL"]})


def beaker_file() -> WSGIApp:
    """Beaker's ``SessionMiddleware`` with its file backend."""
    return _beaker({"session.type": "file",
                    "session.data_dir": str(_workdir() / "beaker" / "data"),
                    "session.lock_dir": str(_workdir() / "beaker" / "lock")})
