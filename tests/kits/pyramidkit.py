"""Small real Pyramid applications on zodbsession.pyramid, and pserve processes, for the Pyramid tests."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import transaction
import webtest
from pyramid.config import Configurator
from pyramid.request import Request
from serverproc import Client, _die_with_parent, free_port, port_open
from ZODB import DB

from zodbsession.pyramid import ZodbSessions

#: Settings every test app starts from: an in-memory database, no janitor thread.
BASE_SETTINGS: dict[str, Any] = {
    "zodbsession.uri": "memory://",
    "zodbsession.janitor_interval": "0",
    "zodbsession.cookie_name": "sid",
}

#: {name -> extra settings} of the ways a request's transaction manager and connection come about
MODES: dict[str, dict[str, Any]] = {
    "explicit-tm": {"tm.manager_hook": "pyramid_tm.explicit_manager"},
    "thread-tm": {},
    "zodbconn": {"tm.manager_hook": "pyramid_tm.explicit_manager", "zodbconn.uri": "memory://",
                 "zodbsession.uri": None},
    # the sessions in a database of their own, beside the app's: a two-database commit
    "zodbconn-named": {"tm.manager_hook": "pyramid_tm.explicit_manager", "zodbconn.uri": "memory://",
                       "zodbconn.uri.sessions": "memory://", "zodbsession.database": "sessions",
                       "zodbsession.uri": None},
}


class Apps:
    """Makes apps and closes their databases at the end of the test."""

    def __init__(self) -> None:
        self.made: list[ZodbSessions] = []

    def __call__(self, setup: Callable[[Configurator], None] | None = None,
                 settings: Mapping[str, Any] | None = None, *, mode: str = "explicit-tm",
                 include_first: tuple[str, ...] = ()) -> webtest.TestApp:
        merged = {**BASE_SETTINGS, **MODES[mode], **(settings or {})}
        merged = {k: v for k, v in merged.items() if v is not None}
        with Configurator(settings=merged) as config:
            for name in include_first:
                config.include(name)
            if "zodbconn.uri" in merged:
                config.include("pyramid_zodbconn")
            config.include("zodbsession.pyramid")
            if setup is not None:
                setup(config)
        app = config.make_wsgi_app()
        self.made.append(app.registry.zodbsession)
        test_app = webtest.TestApp(app)
        test_app.registry = app.registry  # type: ignore[attr-defined]
        return test_app

    def close(self) -> None:
        for sessions in self.made:
            sessions.close()
            if sessions.zodbconn and sessions.db is not None:
                for db in set(sessions.db.databases.values()):
                    db.close()


def route(config: Configurator, path: str, view: Callable[..., Any], **options: Any) -> None:
    """Add *view* at *path* (renderer json unless told otherwise)."""
    name = path.strip("/").replace("/", "_") or "home"
    config.add_route(name, path)
    options.setdefault("renderer", "json")
    config.add_view(view, route_name=name, **options)


def db_of(app: webtest.TestApp) -> DB:
    """The database the app's sessions are in."""
    return app.registry.zodbsession.db


def intrude(db: DB, change: Callable[[Any], None]) -> None:
    """Commit *change*(connection) from a second connection of its own, as another request would."""
    tm = transaction.TransactionManager(explicit=True)
    connection = db.open(transaction_manager=tm)
    try:
        with tm:
            change(connection)
    finally:
        connection.close()


def set_cookies(response: webtest.TestResponse) -> list[str]:
    return response.headers.getall("Set-Cookie")


def apps_fixture() -> Iterator[Apps]:
    apps = Apps()
    try:
        yield apps
    finally:
        apps.close()


def counter_app(config: Any) -> None:
    """``/count`` adds one to a session counter; ``/peek`` reads it; ``/boom`` adds one and raises."""

    def count(request: Request) -> dict[str, Any]:
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    def peek(request: Request) -> dict[str, Any]:
        return {"n": request.session.get("n"), "new": request.session.new}

    def boom(request: Request) -> None:
        request.session["n"] = request.session.get("n", 0) + 1
        raise RuntimeError("boom")

    route(config, "/count", count)
    route(config, "/peek", peek)
    route(config, "/boom", boom)


def login_app(config: Any) -> None:
    def login(request: Request) -> dict[str, Any]:
        before = request.session.get_csrf_token()
        request.session.login(request.params["user"])
        return {"token_before": before, "token_after": request.session.get_csrf_token()}

    def whoami(request: Request) -> dict[str, Any]:
        return {"user": request.session.user_id, "n": request.session.get("n")}

    def logout(request: Request) -> dict[str, Any]:
        request.session.invalidate()
        if "again" in request.params:
            request.session["n"] = "fresh"
        return {}

    def login_then_fail(request: Request) -> None:
        request.session.login(request.params["user"])
        raise RuntimeError("after the login")

    route(config, "/login", login)
    route(config, "/whoami", whoami)
    route(config, "/logout", logout)
    route(config, "/login_then_fail", login_then_fail)
    counter_app(config)


class Shop:
    """``python -m pyramid.scripts.pserve development.ini`` in *directory*, on a free port.

    The ini file is used as written, but for its ``listen`` port, changed to a free one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = directory / "pserve.log"

    def start(self, timeout: float = 60) -> Shop:
        ini = self.directory / "development.ini"
        text, changed = re.subn(r"listen = 127\.0\.0\.1:\d+", f"listen = 127.0.0.1:{self.port}",
                                ini.read_text())
        assert changed == 1
        ini.write_text(text)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyramid.scripts.pserve", "development.ini"],
                cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"pserve did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def client(self) -> Client:
        return Client(f"http://127.0.0.1:{self.port}")
