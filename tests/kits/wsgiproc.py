"""Another WSGI server in a child process: ``python -m waitress`` (or pserve) on loopback.

For the tests that run one application under ``zodbsession serve`` and under
another server, and the tests of what such a server leaves behind when it
stops (``stop()`` sends Ctrl-C, SIGINT, as a person at a terminal does).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from serverproc import _Process


class WSGIProcess(_Process):
    """``python -m waitress --listen 127.0.0.1:PORT *args`` (or any *command*) in *cwd*.

    serverproc's child process, with another command line, and Ctrl-C to stop it.
    """

    command = "wsgi"
    stop_signal = signal.SIGINT

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None,
                 command: list[str] | None = None, port: int | None = None,
                 python: str | Path = sys.executable) -> None:
        super().__init__(cwd, env or {}, *args, port=port, executable=python)
        self.custom_argv = command

    def argv(self) -> list[str]:
        return self.custom_argv or [self.executable, "-m", "waitress", "--listen",
                                    f"127.0.0.1:{self.port}", *self.args]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> WSGIProcess:
        super().start(timeout)
        return self
