"""The Quixote adapter's test kit: a test site, a waitress in this process, HTTP helpers.

Every server here is waitress on 127.0.0.1 with an ephemeral port and 8
threads; every client is a real HTTP client with a cookie jar
(``serverproc.Client``).
"""


from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from BTrees.Length import Length
from persistent.list import PersistentList
from quixote import get_field, get_request, get_session, get_session_manager, get_user, redirect
from quixote.directory import Directory
from quixote.errors import AccessError
from serverproc import Client, _die_with_parent, free_port, port_open
from waitress.server import create_server
from ZODB import DB

from zodbsession import Redirect, SessionManager
from zodbsession.quixote import QuixoteApp, root

TIMEOUT = 30  # seconds, for every socket call and every join

#: The console script installed next to the interpreter running the tests.
WAITRESS_SERVE = str(Path(sys.executable).with_name("waitress-serve"))

#: Quixote's default session cookie name, which the adapter keeps.
COOKIE = "QX_session"


def counter() -> Length:
    """The site's own count of committed /count requests, in the database root."""
    data = root()
    if "hits" not in data:
        data["hits"] = Length()
    return data["hits"]


def notes() -> PersistentList:
    data = root()
    if "notes" not in data:
        data["notes"] = PersistentList()
    return data["notes"]


class Site(Directory):
    """The test site: each view does one thing the tests look at."""

    _q_exports = ["", "count", "fail", "deny", "login", "logout", "expire", "conflict", "whoami",
                  "note", "leave", "csrf", "check_csrf", "token", "spend", "undo_then_count"]

    def __init__(self, db: DB) -> None:
        self.db = db
        self.attempts: list[int] = []  # the attempt numbers /conflict ran with

    def _q_index(self) -> str:
        """The session's count and the site's data, read only."""
        return f"n={get_session().get('n', 0)} notes={len(root().get('notes', ()))}"

    def count(self) -> str:
        session = get_session()
        session["n"] = session.get("n", 0) + 1
        counter().change(1)
        return str(session["n"])

    def note(self) -> str:
        notes().append(get_field("text"))
        get_session()["noted"] = get_session().get("noted", 0) + 1
        return "noted"

    def fail(self) -> str:
        """Changes the session and the site's data, then raises: both are rolled back."""
        get_session()["n"] = 1000
        notes().append("never")
        raise RuntimeError("the view failed")

    def deny(self) -> str:
        """Changes both, then raises Quixote's AccessError: a PublishError, so both commit."""
        get_session()["denied"] = get_session().get("denied", 0) + 1
        notes().append("denied")
        raise AccessError("members only")

    def leave(self) -> str:
        """zodbsession's own Redirect, raised in a Quixote view: 303, committed."""
        get_session()["left"] = True
        raise Redirect("/")

    def login(self) -> str:
        get_session().set_user(get_field("user"))
        return redirect("/whoami")

    def logout(self) -> str:
        get_session().set_user(None)
        return redirect("/whoami")

    def whoami(self) -> str:
        return f"user={get_user()} remote_user={get_request().environ.get('REMOTE_USER')}"

    def expire(self) -> str:
        get_session_manager().expire_session()
        return f"expired session={get_session()}"

    def csrf(self) -> str:
        return get_session().get_csrf_token()

    def check_csrf(self) -> str:
        return "valid" if get_session().valid_csrf_token() else "invalid"

    def token(self) -> str:
        return get_session().create_form_token()

    def spend(self) -> str:
        """Uses up a form token once, as ``quixote.form`` does."""
        session, token = get_session(), get_field("token")
        if not session.has_form_token(token):
            return "unknown"
        session.remove_form_token(token)
        return "spent"

    def undo_then_count(self) -> str:
        """Changes both, forgets them with the Quixote 2 verb, then counts: only the count commits."""
        notes().append("forgotten")
        get_session()["n"] = 1000
        get_session_manager().forget_changes(get_session())
        return self.count()

    def conflict(self) -> str:
        """On its first attempt another transaction changes the same key first: a conflict, retried."""
        session = get_session()
        n = session.get("n", 0)  # loaded now, so the other commit comes after
        attempt = get_request().environ["zodbsession.attempt"]
        self.attempts.append(attempt)
        if attempt == 1:
            with self.db.transaction() as conn:
                SessionManager().get(conn, session.id)["n"] = n + 100
        session["n"] = n + 1
        return str(session["n"])


@dataclass
class Served:
    """One application on one waitress: its URL, the app and the site behind it."""

    url: str
    app: QuixoteApp
    site: Site
    db: DB
    clients: list[Client] = field(default_factory=list)

    def client(self) -> Client:
        return Client(self.url)


@contextmanager
def waitress(app: Callable[..., Any], threads: int = 8) -> Iterator[str]:
    """Serve *app* with waitress on 127.0.0.1, an ephemeral port and *threads* threads.

    The event loop turns in a thread of its own, which also closes the
    sockets when the block ends (closing them from another thread races the
    loop's ``poll``).
    """
    server = create_server(app, host="127.0.0.1", port=0, threads=threads, map={})
    stopping = threading.Event()

    def loop() -> None:
        while not stopping.is_set():
            server.asyncore.loop(timeout=0.1, map=server._map, use_poll=True, count=1)
        for channel in list(server._map.values()):
            channel.close()

    thread = threading.Thread(target=loop, name="waitress", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stopping.set()
        thread.join(timeout=TIMEOUT)
        server.task_dispatcher.shutdown(timeout=TIMEOUT)


def post(client: Client, path: str, body: bytes = b"") -> tuple[int, str]:
    """POST *body* as a form; a redirect is followed, as a browser does."""
    status, _headers, data = client.request("POST", path, body,
                                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    return status, data.decode()


def get(client: Client, path: str) -> tuple[int, str]:
    status, _headers, data = client.request("GET", path)
    return status, data.decode()



class WaitressServe:
    """``waitress-serve --threads 8 APP`` in a child process, on a free loopback port."""

    def __init__(self, app: str, cwd: Path, env: dict[str, str]) -> None:
        self.app = app
        self.port = free_port()
        self.cwd, self.env = cwd, env
        self.log_path = cwd / f"waitress-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WaitressServe:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [WAITRESS_SERVE, "--threads", "8", "--listen", f"127.0.0.1:{self.port}", self.app],
            cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"waitress-serve exited:\n{self.log_path.read_text()}")
            if port_open(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"waitress-serve did not listen:\n{self.log_path.read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def raw(url: str, method: str, path: str, cookie: str | None = None,
        ) -> tuple[int, list[tuple[str, str]], str]:
    """One request without a cookie jar or redirects: the status, the headers as sent, the body."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        headers = {"Content-Length": "0"} | ({"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read().decode()
        return response.status, response.getheaders(), body
    finally:
        conn.close()
