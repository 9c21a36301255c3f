"""``zodbsession serve`` as a real process on loopback, under 16 keep-alive clients.

The server is the installed console script, configured only through the
environment (a free port, a temporary FileStorage), serving the demo app.
The load generator is a thread per client, each with one ``http.client``
keep-alive connection and its own cookie, posting ``/api/counter`` until a
request count or a time limit is reached. Afterwards every client reads its
session back: its counter must equal the increments it saw acknowledged.
Retries are counted from the server's log, where the publisher writes a
"retrying" line for each one. The load generator shares the machine's two
cores with the server, so the requests per second are a floor.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.workload import percentile

log = logging.getLogger("bench")


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command() -> list[str]:
    """The ``zodbsession`` console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("zodbsession")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from zodbsession.serve.cli import main; main()"]


class Server:
    """``zodbsession serve`` in a child process with its log in a file."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        self.env = {
            **os.environ,
            "ZODBSESSION_SERVER_PORT": str(self.port),
            "ZODBSESSION_STORAGE_URI": f"file://{workdir / 'Data.fs'}",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(server_command() + ["serve"], cwd=self.workdir,
                                            env=self.env, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server did not listen within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait (a kill if it hangs); the exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class LoadClient:
    """One keep-alive connection with its own cookie; what it sent and got back."""

    port: int
    cookie: str | None = None
    acked: int = 0
    last_count: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)

    def run(self, requests: int, seconds: float, start: threading.Barrier) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        start.wait()
        deadline = time.monotonic() + seconds
        try:
            for _ in range(requests):
                if time.monotonic() >= deadline:
                    break
                self._post(conn)
        finally:
            conn.close()

    def _post(self, conn: http.client.HTTPConnection) -> None:
        headers = {"Content-Length": "0"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        started = time.perf_counter_ns()
        try:
            conn.request("POST", "/api/counter", body=b"", headers=headers)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.errors.append(repr(exc))
            conn.close()  # reconnects on the next request
            return
        self.latencies_ns.append(time.perf_counter_ns() - started)
        if response.status != 200:
            self.errors.append(f"{response.status} {body[:100]!r}")
            return
        set_cookie = response.getheader("Set-Cookie")
        if set_cookie:
            self.cookie = set_cookie.split(";", 1)[0]
        count = json.loads(body)["count"]
        if count != self.last_count + 1:
            self.errors.append(f"counter went from {self.last_count} to {count}")
        self.last_count = count
        self.acked += 1

    def stored_count(self) -> int | None:
        """The counter the server holds for this client's session."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/api/session", headers={"Cookie": self.cookie or ""})
            response = conn.getresponse()
            data = json.loads(response.read())
        finally:
            conn.close()
        return data.get("data", {}).get("count")


def http_load(workdir: Path, clients: int, requests_per_client: int, seconds: float) -> dict[str, Any]:
    """Serve, load with *clients* threads, check the counters, stop; the figures."""
    server = Server(workdir)
    server.start()
    try:
        load = [LoadClient(server.port) for _ in range(clients)]
        barrier = threading.Barrier(clients + 1)
        threads = [threading.Thread(target=c.run, args=(requests_per_client, seconds, barrier))
                   for c in load]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join(seconds + 60)  # a request in flight at the deadline still ends
        elapsed = time.perf_counter() - started
        stored = [c.stored_count() for c in load]
    finally:
        status = server.stop()
    server_log = server.log()
    latencies = sorted(ns for c in load for ns in c.latencies_ns)
    acked = sum(c.acked for c in load)
    errors = [e for c in load for e in c.errors]
    return {
        "clients": clients,
        "requests": len(latencies),
        "acknowledged": acked,
        "seconds": elapsed,
        "requests_per_s": acked / elapsed if elapsed else 0.0,
        "median_ms": percentile(latencies, 50) / 1e6 if latencies else None,
        "p99_ms": percentile(latencies, 99) / 1e6 if latencies else None,
        "errors": len(errors),
        "error_samples": errors[:5],
        "retries": server_log.count("retrying"),
        "gave_up": server_log.count("giving up"),
        "counters_match": all(s == c.acked for s, c in zip(stored, load, strict=True)),
        "server_exit_status": status,
    }
