"""The storage servers behind ``bench --http``'s scale-out contenders: ZEO, and PostgreSQL for RelStorage.

Both run on loopback under the bench's temporary directory and stop with it.
PostgreSQL is a throwaway cluster (``initdb``, then ``postgres`` on a free
port, as the ``postgres`` user when the bench runs as root) with its
defaults, fsync on: its WAL flushes are what make a RelStorage commit
durable, and ``wal_syncs`` reads how many it made (``pg_stat_wal``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.http_load import free_port, server_command


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def zeo_server(workdir: Path) -> Iterator[str]:
    """``zodbsession zeo`` on a free port with its own FileStorage; the client URI."""
    port = free_port()
    directory = workdir / "zeo"
    directory.mkdir()
    env = {**os.environ, "ZODBSESSION_ZEO_ADDRESS": f"127.0.0.1:{port}",
           "ZODBSESSION_ZEO_STORAGE": str(directory / "Data.fs")}
    with (directory / "zeo.log").open("ab") as log:
        process = subprocess.Popen([*server_command(), "zeo"], env=env, cwd=directory, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("zodbsession zeo did not start: "
                                   + (directory / "zeo.log").read_text()[-2000:])
            time.sleep(0.1)
        yield f"zeo://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def postgres_binaries() -> Path | None:
    """The directory of ``initdb`` and ``postgres``, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


@contextlib.contextmanager
def postgres_server(workdir: Path) -> Iterator[tuple[str, Callable[[], int]]]:
    """A throwaway PostgreSQL with a database for RelStorage: (its URI, a WAL-sync counter)."""
    import psycopg2

    bindir = postgres_binaries()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (no initdb/postgres)")
    run_as: dict[str, Any] = {}
    # Its own directory in /tmp: the bench's temporary directory is closed to other users.
    home = Path(tempfile.mkdtemp(prefix="zodbsession-bench-pg-"))
    cleanup = contextlib.ExitStack()
    cleanup.callback(shutil.rmtree, home, True)
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        account = pwd.getpwnam("postgres")
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        os.chown(home, account.pw_uid, account.pw_gid)
    data = home / "data"
    port = free_port()
    done = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                           "--auth=trust", "-E", "UTF8"], capture_output=True, text=True,
                          timeout=300, cwd=home, check=False, **run_as)
    if done.returncode:
        cleanup.close()
        raise RuntimeError(f"initdb failed: {done.stderr[-1000:]}")
    with (workdir / "postgres.log").open("ab") as log:
        process = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                    "-p", str(port), "-k", str(home)], stdout=log,
                                   stderr=subprocess.STDOUT, cwd=home, **run_as)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                admin = psycopg2.connect(host="127.0.0.1", port=port, user="postgres",
                                         dbname="postgres", connect_timeout=2)
                break
            except psycopg2.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start") from None
                time.sleep(0.2)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("CREATE DATABASE bench")

        def wal_syncs() -> int:
            with admin.cursor() as cursor:
                cursor.execute("SELECT wal_sync FROM pg_stat_wal")
                row = cursor.fetchone()
                return int(row[0]) if row else 0

        yield f"postgres://postgres@127.0.0.1:{port}/bench?keep_history=false", wal_syncs
        admin.close()
    finally:
        process.send_signal(signal.SIGINT)  # a fast shutdown
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        cleanup.close()
