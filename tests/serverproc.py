"""Running ``zodbsession`` as a real process on loopback, for the integration tests."""

from __future__ import annotations

import http.cookiejar
import json
import os
import signal
import socket
import subprocess
import sys
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


def run_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run one ``zodbsession`` command to completion."""
    return subprocess.run([ZODBSESSION, *args], env={**os.environ, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


class ServerProcess:
    """``zodbsession serve`` in a child process, started and stopped by the test."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.cwd = cwd
        self.env = {**os.environ, "ZODBSESSION_SERVER_PORT": str(self.port), **env}
        self.args = args
        self.process: subprocess.Popen | None = None
        self.log_path = cwd / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> ServerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([ZODBSESSION, "serve", *self.args], cwd=self.cwd,
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not listen within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for a clean exit; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
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

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.stop()
            finally:
                self.kill()


class Client:
    """An HTTP client with its own cookie jar, like one browser."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
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

    def cookie(self, name: str = "zodbsession") -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)
