"""RelStorage: several app server processes on one SQLite file, and on a real PostgreSQL.

SQLite needs no server: the processes share ``sqlite://?data_dir=...``.
PostgreSQL is a throwaway cluster that the session-scoped ``postgres``
fixture creates with ``initdb`` and starts with ``pg_ctl`` on a free loopback
port (as the ``postgres`` user when the tests run as root); it is skipped,
saying why, only when the PostgreSQL binaries or the driver are missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import itertools
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import Client, ServerProcess, free_port, pid_app_env, run_cli

pytest.importorskip("relstorage", reason="RelStorage is not installed (pip install RelStorage)")


def share_one_session(first: ServerProcess, second: ServerProcess, rounds: int = 10) -> Client:
    """One cookie alternating between two servers; returns the browser after checking the count."""
    browser = Client(first.url)
    clients = [browser, browser.sharing_cookies(second.url)]
    answers = [clients[i % 2].json("POST", "/") for i in range(rounds)]
    assert [a[0] for a in answers] == [200] * rounds, answers
    assert [a[1]["n"] for a in answers] == list(range(1, rounds + 1))
    return browser


def maintenance_works_live(tmp_path: Path, env: dict[str, str], session_id: str,
                           server: ServerProcess) -> None:
    """stats and revoke through the CLI while *server* serves; the revoke takes effect there."""
    stats = run_cli("stats", "--json", env=env, cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    figures = json.loads(stats.stdout)
    assert figures["live_sessions"] == 1
    assert figures["databases"][0]["storage_class"] == "relstorage.storage.RelStorage"
    revoked = run_cli("revoke", "--", session_id, env=env, cwd=tmp_path)
    assert (revoked.returncode, revoked.stdout.strip()) == (0, "revoked 1 session"), revoked.stderr
    # The server now reads the revoked cookie as no session at all.
    request = urllib.request.Request(server.url + "/", headers={"Cookie": f"zodbsession={session_id}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["n"] == 0


# -- SQLite ---------------------------------------------------------------------


def test_app_servers_share_one_sqlite_relstorage_with_no_server(tmp_path):
    """Three processes (a two-worker server and a single one) on one SQLite RelStorage."""
    uri = f"sqlite://?data_dir={tmp_path / 'relstorage'}&keep_history=false"
    env = {"ZODBSESSION_STORAGE_URI": uri, "ZODBSESSION_SERVER_THREADS": "4",
           **pid_app_env(tmp_path)}
    with ServerProcess(tmp_path, env, "--workers", "2") as first, ServerProcess(tmp_path, env) as second:
        browser = share_one_session(first, second)
        maintenance_works_live(tmp_path, env, browser.cookie(), second)
        assert Client(first.url).json("GET", "/")[0] == 200
    assert first.process.returncode == 0 and second.process.returncode == 0
    assert (tmp_path / "relstorage" / "main.sqlite3").exists()


# -- PostgreSQL -------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[tuple[str, int]]:
    """A throwaway PostgreSQL cluster on 127.0.0.1: yields (superuser, port).

    The server is a child of the test process that dies with it (Linux), and
    clusters left behind by a killed run are removed at the next start.
    """
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed: no initdb/pg_ctl on PATH or in "
                    "/usr/lib/postgresql/*/bin (Debian: apt-get install -y postgresql)")
    psycopg2 = pytest.importorskip("psycopg2", reason="the PostgreSQL driver is missing "
                                   "(pip install psycopg2-binary)")
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    _remove_clusters_of_dead_runs(bindir, run_as)
    home = tempfile.mkdtemp(prefix=CLUSTER_PREFIX)
    Path(home, "owner").write_text(str(os.getpid()))
    if run_as:
        os.chown(home, run_as["user"], run_as["group"])
    data = os.path.join(home, "data")
    port = free_port()
    server = None
    try:
        initdb = subprocess.run(
            [str(bindir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"], capture_output=True, text=True, timeout=120, cwd=home, **run_as)
        assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}"
        with open(os.path.join(home, "server.log"), "wb") as log:
            server = subprocess.Popen(
                [str(bindir / "postgres"), "-D", data, "-F", "-h", "127.0.0.1", "-p", str(port),
                 "-k", home], stdout=log, stderr=subprocess.STDOUT, cwd=home,
                preexec_fn=_die_with_parent, **run_as)
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                 connect_timeout=2).close()
                break
            except psycopg2.OperationalError:
                assert server.poll() is None, Path(home, "server.log").read_text(errors="replace")
                assert time.monotonic() < deadline, "PostgreSQL did not start within 60 s"
                time.sleep(0.2)
        yield "postgres", port
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        shutil.rmtree(home, ignore_errors=True)


#: Where the clusters live: ``<tmp>/zodbsession-pg-XXXX/{owner,data,server.log}``.
CLUSTER_PREFIX = "zodbsession-pg-"


def _die_with_parent() -> None:
    """In the child: ask Linux for SIGINT (a fast shutdown) when the test process dies."""
    with contextlib.suppress(Exception):  # not Linux: the next run cleans up instead
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


def _remove_clusters_of_dead_runs(bindir: Path, run_as: dict[str, Any]) -> None:
    for home in glob.glob(os.path.join(tempfile.gettempdir(), CLUSTER_PREFIX + "*")):
        try:
            owner = int(Path(home, "owner").read_text())
            os.kill(owner, 0)
            continue  # its test run is still going
        except (OSError, ValueError):
            pass
        if os.path.exists(os.path.join(home, "data", "postmaster.pid")):
            subprocess.run([str(bindir / "pg_ctl"), "-D", os.path.join(home, "data"), "-m",
                            "immediate", "-w", "stop"], capture_output=True, timeout=60, **run_as)
        shutil.rmtree(home, ignore_errors=True)


_databases = itertools.count(1)


@pytest.fixture
def postgres_uri(postgres) -> str:
    """A fresh, empty database in the cluster, as a RelStorage postgres:// URI."""
    import psycopg2

    superuser, port = postgres
    name = f"zodbsession_{next(_databases)}"
    connection = psycopg2.connect(host="127.0.0.1", port=port, user=superuser, dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = 'zodbsession'")
        if cursor.fetchone() is None:
            cursor.execute("CREATE ROLE zodbsession LOGIN PASSWORD 'secret'")
        cursor.execute(f"CREATE DATABASE {name} OWNER zodbsession")
    connection.close()
    return f"postgres://zodbsession:secret@127.0.0.1:{port}/{name}?keep_history=false"


def test_app_servers_share_one_postgres_relstorage(tmp_path, postgres_uri):
    """Two workers and a single server on one PostgreSQL database; maintenance runs live."""
    env = {"ZODBSESSION_STORAGE_URI": postgres_uri, "ZODBSESSION_SERVER_THREADS": "4",
           **pid_app_env(tmp_path)}
    with ServerProcess(tmp_path, env, "--workers", "2") as first, ServerProcess(tmp_path, env) as second:
        browser = share_one_session(first, second)
        maintenance_works_live(tmp_path, env, browser.cookie(), first)
        packed = run_cli("pack", env=env, cwd=tmp_path)
        assert packed.returncode == 0, packed.stderr
    assert first.process.returncode == 0 and second.process.returncode == 0


def _set_connections(postgres, database: str, *, allowed: bool) -> None:
    """Open or close *database* to new connections; closing also ends the open ones."""
    import psycopg2

    superuser, port = postgres
    connection = psycopg2.connect(host="127.0.0.1", port=port, user=superuser, dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS {str(allowed).lower()}")
        if not allowed:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
    connection.close()


def test_postgres_outage_answers_503_and_recovers_by_itself(tmp_path, postgres, postgres_uri):
    """PostgreSQL refusing the database: 503 (never a 500 or a hang), then service resumes."""
    database = postgres_uri.rsplit("/", 1)[1].split("?", 1)[0]
    env = {"ZODBSESSION_STORAGE_URI": postgres_uri, "ZODBSESSION_SERVER_THREADS": "2"}
    with ServerProcess(tmp_path, env) as server:
        client = Client(server.url)
        assert client.json("POST", "/api/counter") == (200, {"count": 1})
        _set_connections(postgres, database, allowed=False)
        try:
            answers = [client.json("POST", "/api/counter") for _ in range(3)]
        finally:
            _set_connections(postgres, database, allowed=True)
        assert [status for status, _body in answers] == [503] * 3, answers
        assert all("unavailable" in body for _status, body in answers), answers
        deadline = time.monotonic() + 30
        while (answer := client.json("POST", "/api/counter"))[0] != 200:
            assert time.monotonic() < deadline, answer
            time.sleep(0.5)
    assert answer == (200, {"count": 2})
    assert "the storage cannot be reached" in server.log()


# -- pack and verify on a relational database ---------------------------------------


def _sessions_made_then_revoked(uri: str) -> None:
    from zodbsession import SessionManager, open_db

    db = open_db(uri)
    try:
        manager = SessionManager()
        with db.transaction() as conn:
            for _ in range(200):
                manager.new(conn)["data"] = "x" * 200
        with db.transaction() as conn:
            for session_id in list(manager.container(conn).sessions.keys()):
                manager.revoke(conn, session_id)
    finally:
        db.close()


def _pack_and_verify_say_what_a_relational_database_is(tmp_path: Path, uri: str, kind: str) -> None:
    env = {"ZODBSESSION_STORAGE_URI": uri}
    _sessions_made_then_revoked(uri)
    packed = run_cli("pack", env=env, cwd=tmp_path)
    assert packed.returncode == 0, packed.stderr
    line = packed.stdout.strip()
    assert line.startswith("packed main (relstorage.storage.RelStorage) in "), line
    assert f"as {kind} counts it" in line and "VACUUM" in line, line
    verified = run_cli("verify", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Data.fs" not in verified.stdout, verified.stdout
    assert "keeps its objects in a relational database, not in a FileStorage file" in verified.stdout
    assert verified.stdout.strip().splitlines()[-1] == "the storage is sound"


def test_pack_and_verify_on_sqlite_say_what_the_figures_mean(tmp_path):
    uri = f"sqlite://?data_dir={tmp_path / 'relstorage'}&keep_history=false"
    _pack_and_verify_say_what_a_relational_database_is(tmp_path, uri, "SQLite")


def test_pack_and_verify_on_postgres_say_what_the_figures_mean(tmp_path, postgres_uri):
    """PostgreSQL's size grows across a pack until it vacuums: pack used to report it as such."""
    _pack_and_verify_say_what_a_relational_database_is(tmp_path, postgres_uri, "PostgreSQL")
