"""Another WSGI server in a child process: ``python -m waitress`` (or pserve) on loopback.

For the tests that run one application under ``zodbsession serve`` and under
another server, and the tests of what such a server leaves behind when it
stops (``stop()`` sends Ctrl-C, SIGINT, as a person at a terminal does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from serverproc import free_port, port_open


class WSGIProcess:
    """``python -m waitress --listen 127.0.0.1:PORT *args`` (or any *command*) in *cwd*."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None,
                 command: list[str] | None = None, port: int | None = None,
                 python: str | Path = sys.executable) -> None:
        self.cwd = cwd
        self.port = port or free_port()
        self.command = command or [str(python), "-m", "waitress", "--listen",
                                   f"127.0.0.1:{self.port}", *args]
        self.env = {**os.environ, **(env or {})}
        self.log_path = cwd / f"wsgi-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60) -> WSGIProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.process.returncode}:\n{self.log()}")
            if port_open(self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.command} did not listen within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        """Ctrl-C, then wait for the exit; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> WSGIProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.stop()
            finally:
                self.kill()
