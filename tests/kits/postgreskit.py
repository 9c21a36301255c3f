"""A private PostgreSQL cluster for a test that must do things to the server (stop it, freeze it).

``PrivateCluster`` makes a cluster with ``initdb`` in a directory of its own
and runs ``postgres`` on a free loopback port; ``freeze()`` stops every one
of its processes (SIGSTOP: sockets stay open, nothing answers) and
``thaw()`` resumes them. As root it runs as
the ``postgres`` user (initdb and postgres refuse root). ``skip_reason()``
says why a test cannot have one here.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from serverproc import free_port


def bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are; None if PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def skip_reason() -> str | None:
    """Why no private cluster can run here, or None."""
    if bindir() is None:
        return ("PostgreSQL is not installed: no initdb/pg_ctl on PATH or in "
                "/usr/lib/postgresql/*/bin (Debian: apt-get install -y postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver is missing (pip install psycopg2-binary)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    return None


class PrivateCluster:
    """One throwaway cluster; ``with`` starts it and removes it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.home = ""
        self.server: subprocess.Popen | None = None
        self.run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            self.run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def __enter__(self) -> PrivateCluster:
        import psycopg2

        found = bindir()
        assert found is not None, skip_reason()
        self.home = tempfile.mkdtemp(prefix="zodbsession-pgfreeze-")
        if self.run_as:
            os.chown(self.home, self.run_as["user"], self.run_as["group"])
        data = os.path.join(self.home, "data")
        initdb = subprocess.run(
            [str(found / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"], capture_output=True, text=True, timeout=120, cwd=self.home, **self.run_as)
        assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}"
        with open(os.path.join(self.home, "server.log"), "wb") as log:
            self.server = subprocess.Popen(
                [str(found / "postgres"), "-D", data, "-F", "-h", "127.0.0.1", "-p", str(self.port),
                 "-k", self.home], stdout=log, stderr=subprocess.STDOUT, cwd=self.home,
                **self.run_as)
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                 connect_timeout=2).close()
                return self
            except psycopg2.OperationalError:
                assert self.server.poll() is None, self.log()
                assert time.monotonic() < deadline, "PostgreSQL did not start within 60 s"
                time.sleep(0.2)

    def database(self, name: str) -> str:
        """Create database *name* owned by a role of its own; its RelStorage postgres:// URI."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                      dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE ROLE zodbsession LOGIN PASSWORD 'secret'")
            cursor.execute(f"CREATE DATABASE {name} OWNER zodbsession")
        connection.close()
        return f"postgres://zodbsession:secret@127.0.0.1:{self.port}/{name}?keep_history=false"

    def freeze(self) -> None:
        """SIGSTOP every process of the cluster: connections stay open, nothing answers.

        The postmaster first (it forks no more), then each of its children:
        every backend is a process group of its own (PostgreSQL calls
        ``setsid`` in each), so no one signal reaches them all.
        """
        assert self.server is not None
        os.kill(self.server.pid, signal.SIGSTOP)
        for pid in self.children():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.server is not None
        for pid in self.children():
            os.kill(pid, signal.SIGCONT)
        os.kill(self.server.pid, signal.SIGCONT)

    def children(self) -> list[int]:
        """The postmaster's child processes (backends, checkpointer, writers...)."""
        assert self.server is not None
        found = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == self.server.pid:
                found.append(int(stat.split("/")[2]))
        return found

    def log(self) -> str:
        path = Path(self.home, "server.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.thaw()
            self.server.send_signal(signal.SIGINT)  # a fast shutdown
            try:
                self.server.wait(60)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)
