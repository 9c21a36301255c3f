"""A maintenance command run where there is no database makes none: one line, exit 2.

Opening a file:// URI creates an empty FileStorage; ``zodbsession stats`` run
in the wrong directory used to leave a ``var/Data.fs`` behind and answer
"live sessions 0". Only ``serve`` and ``zeo`` create a database, and say so.
"""

from __future__ import annotations

import pytest
from serverproc import ServerProcess, ZeoProcess, run_cli

COMMANDS = [("stats",), ("ls",), ("show", "x" * 43), ("expire",), ("revoke", "--all", "--yes"),
            ("pack",), ("verify",)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_a_maintenance_command_where_there_is_no_database_creates_none(tmp_path, command):
    result = run_cli(*command, env={}, cwd=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"zodbsession: storage.uri: no database at {tmp_path}/var/Data.fs (looked for "
        "file://var/Data.fs, config built-in defaults); maintenance commands never create one: run "
        "it where the database is, give --config or ZODBSESSION_STORAGE_URI, or start `zodbsession "
        "serve` to create it"], result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing was created"


def test_the_line_names_the_config_file_it_read_and_a_missing_sessions_file(tmp_path):
    (tmp_path / "var").mkdir()
    (tmp_path / "site.toml").write_text('[storage]\nuri = "file://var/Main.fs"\n'
                                        'sessions_uri = "file://var/Sessions.fs"\n')
    result = run_cli("stats", "--config", "site.toml", env={}, cwd=tmp_path)
    assert result.returncode == 2
    assert "no database at" in result.stderr and "var/Main.fs" in result.stderr
    assert "config site.toml" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.toml", "var"]
    assert list((tmp_path / "var").iterdir()) == []


def test_a_missing_sqlite_relstorage_directory_is_not_created(tmp_path):
    uri = f"sqlite://?data_dir={tmp_path / 'relstorage'}"
    result = run_cli("ls", env={"ZODBSESSION_STORAGE_URI": uri}, cwd=tmp_path)
    assert result.returncode == 2
    assert f"no database at {tmp_path / 'relstorage'}" in result.stderr
    assert not (tmp_path / "relstorage").exists()


def test_serve_and_zeo_create_the_database_and_say_so(tmp_path):
    with ServerProcess(tmp_path, {}) as server:
        pass
    assert f"created a new, empty database at {tmp_path}/var/Data.fs" in server.log()
    zeo_dir = tmp_path / "zeo"
    zeo_dir.mkdir()
    with ZeoProcess(zeo_dir, {"ZODBSESSION_ZEO_STORAGE": str(zeo_dir / "Z.fs")}) as zeo:
        pass
    assert f"created a new, empty database at {zeo_dir}/Z.fs" in zeo.log()
    # and once it exists, the maintenance commands use it
    result = run_cli("stats", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "live sessions     0" in result.stdout
