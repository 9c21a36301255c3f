"""Running ``zodbsession`` as a real process on loopback, for the integration tests."""

from __future__ import annotations

import contextlib
import ctypes
import http.cookiejar
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

#: The console script installed next to the interpreter running the tests.
ZODBSESSION = str(Path(sys.executable).with_name("zodbsession"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on loopback *port*."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def run_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run one ``zodbsession`` command to completion.

    ``serve`` without a port of the caller's gets a free one, never the
    default 8080: a test whose server gets as far as binding must not depend
    on what else the machine runs.
    """
    ports: dict[str, str] = {}
    if args[:1] == ("serve",) and "--port" not in args and "ZODBSESSION_SERVER_PORT" not in env:
        ports["ZODBSESSION_SERVER_PORT"] = str(free_port())
    return subprocess.run([ZODBSESSION, *args], env={**os.environ, **ports, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _die_with_parent() -> None:
    """In the child: SIGTERM it (a clean stop) when the thread that started it exits (Linux).

    A test run that is killed then leaves no servers behind holding ports;
    start processes from the test's own thread, not from a short-lived one.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Process:
    """A ``zodbsession`` command in a child process, ready once its port accepts connections."""

    command = ""
    #: The signal ``stop()`` sends: SIGTERM, as a supervisor does.
    stop_signal = signal.SIGTERM

    def __init__(self, cwd: Path, env: dict[str, str], *args: str, port: int | None = None,
                 executable: str | Path = ZODBSESSION) -> None:
        self.executable = str(executable)
        self.port = port or free_port()
        self.cwd = cwd
        self.env = {**os.environ, **self.port_env(), **env}
        self.args = args
        self.process: subprocess.Popen | None = None
        self.log_path = cwd / f"{self.command}-{self.port}.log"

    def port_env(self) -> dict[str, str]:
        return {}

    def listening(self) -> bool:
        return port_open(self.port)

    def argv(self) -> list[str]:
        """The child's command line."""
        return [self.executable, self.command, *self.args]

    def start(self, timeout: float = 30) -> _Process:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv(), cwd=self.cwd,
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.process.returncode}:\n{self.log()}")
            if self.listening():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.command} did not listen within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        """``stop_signal``, then wait for a clean exit; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(self.stop_signal)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.stop()
            finally:
                self.kill()


class ServerProcess(_Process):
    """``zodbsession serve`` in a child process, started and stopped by the test.

    With *admin_token*, the admin listener is on too, on a free port of its own
    (``admin_url``), and ``start()`` waits for both listeners.
    """

    command = "serve"

    def __init__(self, cwd: Path, env: dict[str, str], *args: str, admin_token: str = "",
                 port: int | None = None, executable: str | Path = ZODBSESSION) -> None:
        self.admin_token = admin_token
        self.admin_port = free_port() if admin_token else None
        super().__init__(cwd, env, *args, port=port, executable=executable)

    def port_env(self) -> dict[str, str]:
        env = {"ZODBSESSION_SERVER_PORT": str(self.port)}
        if self.admin_token:
            env.update(ZODBSESSION_ADMIN_TOKEN=self.admin_token,
                       ZODBSESSION_ADMIN_PORT=str(self.admin_port))
        return env

    def listening(self) -> bool:
        return super().listening() and (self.admin_port is None or port_open(self.admin_port))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


class ZeoProcess(_Process):
    """``zodbsession zeo`` in a child process; ``restart()`` brings it back on the same port.

    With *unix_socket* (an absolute path) it listens there instead of on a port.
    """

    command = "zeo"

    def __init__(self, cwd: Path, env: dict[str, str], *args: str, unix_socket: str = "") -> None:
        self.unix_socket = unix_socket
        super().__init__(cwd, env, *args)

    def port_env(self) -> dict[str, str]:
        return {"ZODBSESSION_ZEO_ADDRESS": self.unix_socket or f"127.0.0.1:{self.port}"}

    def listening(self) -> bool:
        if not self.unix_socket:
            return super().listening()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect(self.unix_socket)
                return True
            except OSError:
                return False

    def uri(self, **query: object) -> str:
        """The zeo:// URI of this server, with optional query parameters."""
        params = "&".join(f"{key}={value}" for key, value in query.items())
        base = f"zeo://{self.unix_socket}" if self.unix_socket else f"zeo://127.0.0.1:{self.port}"
        return base + (f"?{params}" if params else "")

    def restart(self, timeout: float = 30) -> ZeoProcess:
        if self.process is not None and self.process.poll() is None:
            self.stop()
        return self.start(timeout)


class Client:
    """An HTTP client with its own cookie jar, like one browser."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 30,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base_url + path, data=body, method=method,
                                         headers=headers or {})
        try:
            with self.opener.open(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        body = json.dumps(payload).encode() if payload is not None else (b"" if method == "POST" else None)
        status, _headers, data = self.request(method, path, body)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data.decode(errors="replace")

    def sharing_cookies(self, base_url: str) -> Client:
        """Another client, on *base_url*, with this one's cookie jar: the same browser."""
        other = Client(base_url)
        other.jar = self.jar
        other.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        return other

    def cookie(self, name: str = "zodbsession") -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)


#: A test application that says which process served it, and counts POSTs in the session;
#: ``/slow`` takes 1.5 s, to be caught in flight.
PID_APP = '''
import json
import os
import time


def app(environ, start_response):
    session = environ["zodbsession.session"]
    if environ["REQUEST_METHOD"] == "POST":
        session["n"] = session.get("n", 0) + 1
    if environ["PATH_INFO"] == "/slow":
        time.sleep(1.5)
    body = json.dumps({"pid": os.getpid(), "n": session.get("n", 0)}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
'''


def pid_app_env(directory: Path) -> dict[str, str]:
    """Write ``pidapp.py`` to *directory*; the settings that make ``serve`` run it."""
    (directory / "pidapp.py").write_text(PID_APP)
    return {"ZODBSESSION_SERVER_APP": "pidapp:app", "PYTHONPATH": str(directory)}


# -- waiting on processes --------------------------------------------------------------


def post_until_pids(client: Client, pids: set[int], wanted: int = 2, limit: int = 300) -> list[int]:
    """POST from four threads sharing *client*'s cookie until *wanted* pids answered."""
    counts: list[int] = []
    failures: list[tuple[int, object]] = []
    lock = threading.Lock()

    def hammer() -> None:
        while True:
            with lock:
                if len(pids) >= wanted or len(counts) + len(failures) >= limit:
                    return
            status, answer = client.json("POST", "/")
            with lock:
                if status != 200:
                    failures.append((status, answer))
                    continue
                counts.append(answer["n"])
                pids.add(answer["pid"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    return counts


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)

