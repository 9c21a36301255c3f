"""Tests for db.py: storage URIs, lock errors, multi-databases, and a database
read back by another process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import transaction
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage

from zodbsession.core.db import MAIN_DATABASE, SESSIONS_DATABASE, open_db
from zodbsession.core.errors import DatabaseLocked, StorageURIError, ZodbSessionError
from zodbsession.core.manager import SessionManager

#: Opens a FileStorage, says so, and holds it (and its lock) until stdin closes.
HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from ZODB.FileStorage import FileStorage
    storage = FileStorage(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()
    storage.close()
    """
)

#: Reads one session back through the public API and prints its data as JSON.
READ_BACK = textwrap.dedent(
    """
    import json, sys
    import transaction
    from zodbsession import SessionManager, open_db
    db = open_db(sys.argv[1])
    conn = db.open(transaction.TransactionManager())
    session = SessionManager().get(conn, sys.argv[2])
    print(json.dumps(None if session is None else session.data()))
    conn.close()
    db.close()
    """
)


@pytest.fixture
def opened():
    """Closes every database the test registers, even when it fails."""
    databases = []
    yield databases.append
    for database in databases:
        database.close()


def test_relative_file_uri_creates_its_directory(tmp_path, monkeypatch, opened):
    monkeypatch.chdir(tmp_path)
    database = open_db("file://var/Data.fs")
    opened(database)
    assert isinstance(database.storage, FileStorage)
    assert (tmp_path / "var" / "Data.fs").is_file()


def test_file_uri_creates_nested_directories(tmp_path, opened):
    path = tmp_path / "a" / "b" / "Data.fs"
    opened(open_db(f"file://{path}"))
    assert path.is_file()


def test_default_uri_is_var_data_fs(tmp_path, monkeypatch, opened):
    monkeypatch.chdir(tmp_path)
    opened(open_db())
    assert (tmp_path / "var" / "Data.fs").is_file()


def test_memory_uri_opens_a_mapping_storage(opened):
    database = open_db("memory://")
    opened(database)
    assert isinstance(database.storage, MappingStorage)
    with database.transaction() as conn:
        conn.root()["x"] = 1
    with database.transaction() as conn:
        assert conn.root()["x"] == 1


def test_uri_query_options_reach_the_database(opened):
    database = open_db("memory://?connection_cache_size=123", pool_size=3)
    opened(database)
    assert database.getCacheSize() == 123
    assert database.getPoolSize() == 3


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("bogus://x", "bogus"),
        ("var/Data.fs", "not a storage URI"),
        ("memory://?connection_cache_size=abc", "abc"),
        ("memory://?connection_pool_size=many", "many"),
        ("memory://?no_such_option=1", "no_such_option"),
    ],
    ids=["unknown-scheme", "no-scheme", "bad-int", "bad-pool-size", "unknown-option"],
)
def test_bad_uri_raises_storage_uri_error_naming_the_problem(uri, expected):
    with pytest.raises(StorageURIError) as info:
        open_db(uri)
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ZodbSessionError)


def test_unknown_option_message_has_no_repr_quotes():
    with pytest.raises(StorageURIError) as info:
        open_db("memory://?no_such_option=1")
    assert "'" not in str(info.value)


def test_file_storage_locked_by_another_process_raises_database_locked(tmp_path):
    path = tmp_path / "Data.fs"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DatabaseLocked) as info:
            open_db(f"file://{path}")
        assert "in use" in str(info.value)
        assert str(path) in str(info.value)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # Once the other process is gone, the database opens.
    open_db(f"file://{path}").close()


def test_failed_open_releases_the_file_lock(tmp_path):
    uri = f"file://{tmp_path / 'Data.fs'}"
    with pytest.raises(TypeError):
        open_db(uri, cache_size="many")  # ZODB.DB refuses it after the storage opened
    open_db(uri).close()  # not DatabaseLocked: the failed attempt let go


def test_failed_sessions_database_closes_the_main_one(tmp_path):
    uri = f"file://{tmp_path / 'Data.fs'}"
    with pytest.raises(StorageURIError):
        open_db(uri, sessions_uri="bogus://x")
    open_db(uri).close()


def test_sessions_uri_gives_a_multi_database(tmp_path, opened):
    database = open_db(
        f"file://{tmp_path / 'Main.fs'}", sessions_uri=f"file://{tmp_path / 'Sessions.fs'}"
    )
    opened(database)
    assert set(database.databases) == {MAIN_DATABASE, SESSIONS_DATABASE}
    assert database.database_name == MAIN_DATABASE
    assert database.databases[SESSIONS_DATABASE] is not database


def test_one_transaction_commits_to_both_databases(tmp_path, opened):
    database = open_db("memory://", sessions_uri="memory://")
    opened(database)
    sessions_db = database.databases[SESSIONS_DATABASE]
    before = (database.storage.lastTransaction(), sessions_db.storage.lastTransaction())

    conn = database.open(transaction.TransactionManager())
    conn.root()["main"] = 1
    conn.get_connection(SESSIONS_DATABASE).root()["sessions"] = 2
    conn.transaction_manager.commit()
    conn.close()

    assert database.storage.lastTransaction() != before[0]
    assert sessions_db.storage.lastTransaction() != before[1]
    reader = database.open(transaction.TransactionManager())
    assert reader.root()["main"] == 1
    assert reader.get_connection(SESSIONS_DATABASE).root()["sessions"] == 2
    reader.close()


def test_abort_discards_changes_in_both_databases(opened):
    database = open_db("memory://", sessions_uri="memory://")
    opened(database)
    conn = database.open(transaction.TransactionManager())
    conn.root()["main"] = 1
    conn.get_connection(SESSIONS_DATABASE).root()["sessions"] = 2
    conn.transaction_manager.abort()
    assert "main" not in conn.root()
    assert "sessions" not in conn.get_connection(SESSIONS_DATABASE).root()
    conn.close()


def test_a_new_process_reads_back_a_committed_session(tmp_path):
    uri = f"file://{tmp_path / 'Data.fs'}"
    database = open_db(uri)
    conn = database.open(transaction.TransactionManager())
    session = SessionManager().new(conn)
    session.update(cart=["apple", "pear"], count=2)
    conn.transaction_manager.commit()
    conn.close()
    database.close()  # releases the lock for the other process

    result = subprocess.run(
        [sys.executable, "-c", READ_BACK, uri, session.id],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"cart": ["apple", "pear"], "count": 2}
