"""The maintenance commands through the real ``zodbsession`` entry point, on a real FileStorage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from serverproc import ZODBSESSION, Client, ServerProcess, run_cli

from zodbsession import SessionManager, open_db
from zodbsession.core.db import SESSIONS_DATABASE
from zodbsession.serve import control

DAY = 86400.0


@pytest.fixture
def populated(tmp_path):
    """A Data.fs with 4 live sessions (2 of them alice's) and 3 long-expired ones."""
    uri = f"file://{tmp_path}/Data.fs"
    db = open_db(uri)
    live, old = SessionManager(), SessionManager(clock=lambda: time.time() - DAY)
    ids = {"live": [], "expired": []}
    try:
        with db.transaction() as conn:
            for n in range(4):
                session = live.new(conn, user_id="alice" if n < 2 else None)
                session["n"] = n
                ids["live"].append(session.id)
            for n in range(3):
                session = old.new(conn)
                session["n"] = n
                ids["expired"].append(session.id)
    finally:
        db.close()
    return {"ZODBSESSION_STORAGE_URI": uri}, ids


def cli(env, tmp_path, *args):
    result = run_cli(*args, env=env, cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_stats_counts_live_and_expired_sessions(tmp_path, populated):
    env, _ids = populated
    result = cli(env, tmp_path, "stats", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert (figures["live_sessions"], figures["expired_sessions"], figures["users"]) == (4, 3, 1)
    assert figures["databases"][0]["size_bytes"] > 0
    text = cli(env, tmp_path, "stats").stdout
    assert "live sessions     4" in text


def test_expire_removes_only_the_expired_sessions(tmp_path, populated):
    env, ids = populated
    result = cli(env, tmp_path, "expire")
    assert result.returncode == 0, result.stderr
    assert "expired 3 session(s)" in result.stdout
    listed = [json.loads(line)["id"] for line in cli(env, tmp_path, "ls", "--json").stdout.splitlines()]
    assert sorted(listed) == sorted(ids["live"])


def test_ls_filters_by_user_and_limit_and_never_shows_data(tmp_path, populated):
    env, ids = populated
    lines = cli(env, tmp_path, "ls", "--user", "alice", "--json").stdout.splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(ids["live"][:2])
    assert all("data" not in json.loads(line) for line in lines)
    assert len(cli(env, tmp_path, "ls", "--limit", "2").stdout.splitlines()) == 2


def test_show_prints_one_session_with_its_data(tmp_path, populated):
    env, ids = populated
    result = cli(env, tmp_path, "show", ids["live"][3], "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"] == {"n": "3"}


@pytest.mark.parametrize("session_id", ["nonsense", "A" * 43], ids=["malformed", "unknown"])
def test_show_of_a_missing_session_is_one_line_and_exit_2(tmp_path, populated, session_id):
    env, _ids = populated
    result = cli(env, tmp_path, "show", session_id)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_revoke_one_user_and_all(tmp_path, populated):
    env, ids = populated
    assert "revoked 1 session" in cli(env, tmp_path, "revoke", ids["live"][3]).stdout
    assert "revoked 2 session(s)" in cli(env, tmp_path, "revoke", "--user", "alice").stdout
    assert "revoked 4 session(s)" in cli(env, tmp_path, "revoke", "--all").stdout
    assert cli(env, tmp_path, "ls").stdout == ""


def test_revoke_of_an_unknown_id_exits_1(tmp_path, populated):
    env, _ids = populated
    assert cli(env, tmp_path, "revoke", "A" * 43).returncode == 1


def test_revoke_needs_exactly_one_target(tmp_path, populated):
    env, ids = populated
    assert cli(env, tmp_path, "revoke").returncode == 2
    assert cli(env, tmp_path, "revoke", ids["live"][0], "--all").returncode == 2


def test_pack_after_revoking_shrinks_the_file(tmp_path, populated):
    env, _ids = populated
    cli(env, tmp_path, "revoke", "--all")
    before = (tmp_path / "Data.fs").stat().st_size
    result = cli(env, tmp_path, "pack")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "Data.fs").stat().st_size < before


def test_verify_says_sound_and_exits_0(tmp_path, populated):
    env, _ids = populated
    result = cli(env, tmp_path, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the storage is sound" in result.stdout


def test_verify_finds_a_damaged_file_and_exits_1(tmp_path, populated):
    env, _ids = populated
    path = tmp_path / "Data.fs"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    (tmp_path / "Data.fs.index").unlink()
    result = cli(env, tmp_path, "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOT sound" in result.stdout


def test_show_prints_dates_with_ages_and_each_value_as_its_repr_once(tmp_path):
    uri = f"file://{tmp_path}/Data.fs"
    db = open_db(uri)
    try:
        with db.transaction() as conn:
            session = SessionManager().new(conn, user_id="alice")
            session["greeting"] = "hello"
            session["n"] = 3
            session_id = session.id
    finally:
        db.close()
    result = cli({"ZODBSESSION_STORAGE_URI": uri}, tmp_path, "show", session_id)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  greeting = 'hello'" in lines
    assert "  n = 3" in lines
    created = next(line for line in lines if line.startswith("created:"))
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\)", created), created
    deadline = next(line for line in lines if line.startswith("deadline:"))
    assert "(in 29 min)" in deadline or "(in 30 min)" in deadline, deadline


def run_on_a_terminal(args: list[str], env: dict[str, str], cwd, answer: bytes) -> tuple[int, str]:
    """Run ``zodbsession *args`` with a pseudo-terminal as stdin, typing *answer*."""
    primary, secondary = os.openpty()
    try:
        process = subprocess.Popen([ZODBSESSION, *args], stdin=secondary, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd)
        os.close(secondary)
        os.write(primary, answer)
        output, _ = process.communicate(timeout=60)
    finally:
        os.close(primary)
    return process.returncode, output.decode()


def test_revoke_all_on_a_terminal_asks_and_no_keeps_everything(tmp_path, populated):
    env, ids = populated
    code, output = run_on_a_terminal(["revoke", "--all"], env, tmp_path, b"n\n")
    assert code == 1, output
    assert "Revoke every session" in output and "Aborted" in output
    assert len(cli(env, tmp_path, "ls").stdout.splitlines()) == len(ids["live"])


def test_revoke_all_on_a_terminal_revokes_after_yes(tmp_path, populated):
    env, _ids = populated
    code, output = run_on_a_terminal(["revoke", "--all"], env, tmp_path, b"y\n")
    assert code == 0, output
    assert "revoked 7 session(s)" in output  # every stored session, the unswept expired ones too


def test_revoke_all_with_yes_does_not_ask(tmp_path, populated):
    env, _ids = populated
    code, output = run_on_a_terminal(["revoke", "--all", "--yes"], env, tmp_path, b"")
    assert code == 0, output
    assert "Revoke every session" not in output
    assert "revoked 7 session(s)" in output


def test_every_maintenance_command_works_against_a_running_server(tmp_path, populated):
    """With the embedded FileStorage held by ``serve``, the commands go through its control socket."""
    env, ids = populated
    env = {**env, "ZODBSESSION_SERVER_THREADS": "2", "ZODBSESSION_STORAGE_POOL_SIZE": "2"}
    offline = json.loads(cli(env, tmp_path, "stats", "--json").stdout)
    with ServerProcess(tmp_path, env) as server:
        assert Client(server.url).json("POST", "/api/counter")[0] == 200  # one more live session
        live = json.loads(cli(env, tmp_path, "stats", "--json").stdout)
        assert live["live_sessions"] == offline["live_sessions"] + 1
        assert len(cli(env, tmp_path, "ls", "--user", "alice").stdout.splitlines()) == 2
        assert "  n = 3" in cli(env, tmp_path, "show", ids["live"][3]).stdout
        assert "expired 3 session(s)" in cli(env, tmp_path, "expire").stdout
        assert "revoked 2 session(s)" in cli(env, tmp_path, "revoke", "--user", "alice").stdout
        assert cli(env, tmp_path, "revoke", "A" * 43).returncode == 1
        missing = cli(env, tmp_path, "show", "A" * 43)
        assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
        assert "packed main" in cli(env, tmp_path, "pack").stdout
        assert "revoked 3 session(s)" in cli(env, tmp_path, "revoke", "--all", "--yes").stdout
        assert cli(env, tmp_path, "ls").stdout == ""
    assert "control command" in server.log()


@pytest.mark.parametrize("main_uri", ["file://{tmp}/Data.fs", "memory://"],
                         ids=["main-in-a-file", "main-in-memory"])
def test_stats_and_ls_reach_a_server_whose_sessions_have_a_file_of_their_own(tmp_path, main_uri):
    """``storage.sessions_uri`` on a FileStorage of its own: the running server holds that file,
    and the commands reach it over the control socket beside the first file it holds (the
    sessions file itself when the main database is in memory), answering as offline."""
    main_uri = main_uri.format(tmp=tmp_path)
    sessions_uri = f"file://{tmp_path}/Sessions.fs"
    db = open_db(main_uri, sessions_uri=sessions_uri)
    manager = SessionManager(database=SESSIONS_DATABASE)
    try:
        with db.transaction() as conn:
            for n in range(3):
                manager.new(conn, user_id="alice" if n < 2 else None)["n"] = n
    finally:
        for each in set(db.databases.values()):  # a multi-database: close() closes only the main one
            each.close()
    env = {"ZODBSESSION_STORAGE_URI": main_uri, "ZODBSESSION_STORAGE_SESSIONS_URI": sessions_uri,
           "ZODBSESSION_SERVER_THREADS": "2", "ZODBSESSION_STORAGE_POOL_SIZE": "2"}
    counts = ("live_sessions", "expired_sessions", "stored_sessions", "users")
    offline = cli(env, tmp_path, "stats", "--json")
    assert offline.returncode == 0, offline.stderr
    offline_stats = json.loads(offline.stdout)
    offline_ls = cli(env, tmp_path, "ls").stdout
    assert offline_stats["live_sessions"] == 3 and len(offline_ls.splitlines()) == 3
    first_file = str(tmp_path / ("Data.fs" if main_uri.startswith("file:") else "Sessions.fs"))
    with ServerProcess(tmp_path, env) as server:
        # The control listener starts just after the application's port opens.
        deadline = time.monotonic() + 30
        while not control.answers(first_file + ".control") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert control.answers(first_file + ".control"), server.log()
        live_stats = cli(env, tmp_path, "stats", "--json")
        assert live_stats.returncode == 0, live_stats.stderr
        live = json.loads(live_stats.stdout)
        assert {k: live[k] for k in counts} == {k: offline_stats[k] for k in counts}
        assert [d["name"] for d in live["databases"]] == [d["name"] for d in offline_stats["databases"]]
        live_ls = cli(env, tmp_path, "ls")
        assert live_ls.returncode == 0, live_ls.stderr
        assert live_ls.stdout == offline_ls
        assert cli(env, tmp_path, "ls", "--user", "alice").stdout.count("alice") == 2
    assert "control command" in server.log()
