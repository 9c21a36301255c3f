"""Tests for ``zodbsession.ops.maintenance`` on real FileStorage databases."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from opskit import populate, stored_ids
from ZODB import DB
from ZODB.utils import get_pickle_metadata

from zodbsession.core.db import open_db
from zodbsession.core.errors import ConfigError, SessionNotFound
from zodbsession.core.manager import SessionManager
from zodbsession.core.session import new_session_id
from zodbsession.ops import maintenance

IDLE = 600.0
LIFETIME = 3600.0


@pytest.fixture
def manager(clock) -> SessionManager:
    """Short timeouts on conftest's fake clock."""
    return SessionManager(idle_timeout=IDLE, max_lifetime=LIFETIME, access_resolution=10, clock=clock)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[DB]:
    """A FileStorage database opened as the CLI opens one (conftest's is a plain DB)."""
    database = open_db(f"file://{tmp_path}/Data.fs")
    yield database
    database.close()


# -- expire ---------------------------------------------------------------------------


def test_expire_removes_only_expired_sessions_and_counts_them(db, manager, clock):
    old = populate(db, manager, 10)
    clock.now += IDLE - 60
    fresh = populate(db, manager, 5)
    clock.now += 120  # the first ten are past their idle timeout, the five are not

    assert maintenance.expire_sessions(db, manager) == 10
    assert stored_ids(db, manager) == set(fresh)
    assert not set(old) & stored_ids(db, manager)


def test_expire_reports_increasing_progress(db, manager, clock):
    populate(db, manager, 10)
    clock.now += IDLE + 60
    calls: list[int] = []

    removed = maintenance.expire_sessions(db, manager, batch_size=3, progress=calls.append)

    assert removed == 10
    assert len(calls) >= 4
    assert calls == sorted(calls)
    assert calls[-1] == 10


def test_expire_rejects_a_zero_batch_size(db, manager):
    with pytest.raises(ConfigError, match="batch_size"):
        maintenance.expire_sessions(db, manager, batch_size=0)


# -- pack -----------------------------------------------------------------------------


def churn(db: DB, manager: SessionManager, ids: list[str], rounds: int) -> None:
    """Rewrite every session *rounds* times, one transaction a round."""
    for round_ in range(rounds):
        with db.transaction() as conn:
            for session_id in ids:
                manager.get(conn, session_id)["payload"] = "x" * 500 + str(round_)


def test_pack_shrinks_the_file_after_churn_and_keeps_live_sessions(tmp_path, manager, monkeypatch):
    path = tmp_path / "Data.fs"
    synced: list[int] = []  # inode numbers of what was fsynced
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(maintenance.os, "fsync", fsync)
    db = open_db(f"file://{path}")
    try:
        ids = populate(db, manager, 20)
        churn(db, manager, ids, rounds=15)
        maintenance.revoke(db, manager, ids.pop())
        before = path.stat().st_size

        result = maintenance.pack(db)

        assert result.path == str(path)
        assert result.fsynced
        assert path.stat().st_ino in synced  # the renamed, packed file
        assert tmp_path.stat().st_ino in synced  # the directory holding the rename
        assert result.recorded
        assert result.size_before == before
        assert result.size_after < before / 3
        assert path.stat().st_size < before / 3
        assert result.duration >= 0
        json.dumps(result.as_dict())
    finally:
        db.close()

    db = open_db(f"file://{path}")
    try:
        assert stored_ids(db, manager) == set(ids)
        with db.transaction() as conn:
            assert manager.get(conn, ids[0])["payload"] == "x" * 500 + "14"
        assert maintenance.verify(db).sound
    finally:
        db.close()


def test_pack_of_a_multi_database_packs_only_the_sessions_database(tmp_path, clock):
    main_path, sessions_path = tmp_path / "main.fs", tmp_path / "sessions.fs"
    manager = SessionManager(idle_timeout=IDLE, max_lifetime=LIFETIME, database="sessions", clock=clock)
    db = open_db(f"file://{main_path}", sessions_uri=f"file://{sessions_path}")
    try:
        for round_ in range(10):  # churn in main too, so packing it would shrink it
            with db.transaction() as conn:
                conn.root()["app"] = "y" * 2000 + str(round_)
        ids = populate(db, manager, 10)
        churn(db, manager, ids, rounds=10)
        main_before, sessions_before = main_path.stat().st_size, sessions_path.stat().st_size

        result = maintenance.pack(db)

        assert result.database == "sessions"
        assert result.path == str(sessions_path)
        assert main_path.stat().st_size == main_before
        assert sessions_path.stat().st_size < sessions_before / 3
        assert stored_ids(db, manager) == set(ids)
        figures = {entry.name: entry for entry in maintenance.stats(db, manager).databases}
        assert figures["sessions"].last_pack is not None
        assert figures["main"].last_pack is None
    finally:
        db.close()


def test_pack_of_an_unknown_database_is_refused(db):
    with pytest.raises(ConfigError, match="nope"):
        maintenance.pack(db, database="nope")


def test_pack_of_a_non_file_storage_does_not_claim_an_fsync(manager):
    db = DB(None)  # a MappingStorage
    try:
        populate(db, manager, 3)
        result = maintenance.pack(db)
        assert result.path is None
        assert not result.fsynced
    finally:
        db.close()


# -- stats ----------------------------------------------------------------------------


def test_stats_match_a_known_population(db, manager, clock):
    """Twelve sessions expired just now, inside the current expiry slot, still count."""
    start = clock()
    populate(db, manager, 12)
    clock.now += 100
    populate(db, manager, 30, users=("ann", "bob", "cy"))
    clock.now = start + IDLE + 5  # the twelve died 5 s ago; the thirty live on

    figures = maintenance.stats(db, manager)

    assert figures.stored_sessions == 42
    assert figures.expired_sessions == 12
    assert figures.live_sessions == 30
    assert figures.users == 3
    assert figures.taken_at == clock.now
    (database,) = figures.databases
    assert database.size_bytes == os.path.getsize(db.storage._file_name)
    assert database.storage_class == "zodbsession.core.groupcommit.GroupCommitFileStorage"
    assert database.last_pack is None
    json.dumps(figures.as_dict())


def test_stats_read_only_the_due_sessions(db, manager, clock):
    """Counting the expired loads the sessions due for expiry, not every session."""
    populate(db, manager, 4)
    clock.now += IDLE - 60
    populate(db, manager, 300)
    clock.now += 120
    db.cacheMinimize()
    loaded: list[str] = []
    storage = db.storage
    load_before = storage.loadBefore

    def counting_load_before(oid, tid):
        result = load_before(oid, tid)
        if result is not None:
            loaded.append(get_pickle_metadata(result[0])[1])
        return result

    storage.loadBefore = counting_load_before
    try:
        figures = maintenance.stats(db, manager)
    finally:
        del storage.loadBefore
    assert (figures.expired_sessions, figures.live_sessions) == (4, 300)
    assert loaded.count("Session") == 4


def test_stats_report_the_last_pack(db, manager):
    populate(db, manager, 2)
    before = time.time()
    maintenance.pack(db)
    (database,) = maintenance.stats(db, manager).databases
    assert before <= database.last_pack <= time.time()


def test_stats_of_an_empty_database_are_zero(db, manager):
    figures = maintenance.stats(db, manager)
    assert (figures.stored_sessions, figures.expired_sessions, figures.users) == (0, 0, 0)


# -- list and show --------------------------------------------------------------------


def test_list_sessions_filters_by_user_and_limits(db, manager):
    ann = populate(db, manager, 6, users=("ann",))
    populate(db, manager, 4, users=("bob", None))

    listed = list(maintenance.list_sessions(db, manager, user="ann"))
    assert sorted(info.id for info in listed) == sorted(ann)
    assert {info.user_id for info in listed} == {"ann"}
    assert len(list(maintenance.list_sessions(db, manager, user="ann", limit=4))) == 4
    assert len(list(maintenance.list_sessions(db, manager))) == 10
    assert list(maintenance.list_sessions(db, manager, user="nobody")) == []


def test_list_sessions_leaves_out_expired_unless_asked(db, manager, clock):
    populate(db, manager, 3)
    clock.now += IDLE - 60
    live = populate(db, manager, 2)
    clock.now += 120

    assert {info.id for info in maintenance.list_sessions(db, manager)} == set(live)
    everything = list(maintenance.list_sessions(db, manager, include_expired=True))
    assert len(everything) == 5
    assert sum(not info.live for info in everything) == 3


def test_list_sessions_never_exposes_data_values(db, manager):
    populate(db, manager, 3, secret="hunter2-card-4111")
    for info in maintenance.list_sessions(db, manager):
        assert info.data_keys == 2
        assert "hunter2" not in repr(info)
        assert "hunter2" not in json.dumps(info.as_dict())
        assert info.id[8:] not in repr(info)  # the id is a bearer secret too


def test_list_sessions_reads_in_chunks_with_flat_memory(db, manager, monkeypatch):
    """Between chunks no maintenance object stays in any connection cache."""
    monkeypatch.setattr(maintenance, "CHUNK_SIZE", 25)
    ids = populate(db, manager, 200)
    db.cacheMinimize()
    cached = []
    listed = []
    for info in maintenance.list_sessions(db, manager):
        cached.append(db.cacheSize())
        listed.append(info.id)
    assert sorted(listed) == sorted(ids)
    assert max(cached) < 25


def test_show_session_gives_bookkeeping_and_repr_of_data(db, manager, clock):
    (session_id,) = populate(db, manager, 1, users=("ann",), secret="s" * 1000)
    detail = maintenance.show_session(db, manager, session_id)
    assert detail.info.id == session_id
    assert detail.info.user_id == "ann"
    assert detail.info.live
    assert detail.data["n"] == "0"
    assert len(detail.data["secret"]) < 300  # a huge value is shown cut short
    assert json.loads(json.dumps(detail.as_dict()))["data"]["n"] == "0"
    clock.now += IDLE + 1
    assert not maintenance.show_session(db, manager, session_id).info.live


@pytest.mark.parametrize(
    "session_id",
    [new_session_id(), "short", "", "x" * 43 + "!", None],
    ids=["unknown", "short", "empty", "bad-character", "not-a-string"],
)
def test_show_of_unknown_or_malformed_id_raises_session_not_found(db, manager, session_id):
    populate(db, manager, 2)
    with pytest.raises(SessionNotFound):
        maintenance.show_session(db, manager, session_id)


def test_show_writes_nothing(db, manager, clock):
    (session_id,) = populate(db, manager, 1)
    clock.now += 300  # well past the access resolution: a get() would write
    last = db.lastTransaction()
    maintenance.show_session(db, manager, session_id)
    assert db.lastTransaction() == last


# -- revoke ---------------------------------------------------------------------------


def test_revoke_ends_one_session(db, manager):
    first, second = populate(db, manager, 2)
    assert maintenance.revoke(db, manager, first) is True
    assert maintenance.revoke(db, manager, first) is False
    assert maintenance.revoke(db, manager, "malformed") is False
    assert stored_ids(db, manager) == {second}


def test_revoke_user_ends_every_session_of_that_user_only(db, manager):
    populate(db, manager, 9, users=("ann", "bob", None))
    assert maintenance.revoke_user(db, manager, "ann", batch_size=2) == 3
    assert maintenance.revoke_user(db, manager, "ann") == 0
    remaining = list(maintenance.list_sessions(db, manager))
    assert len(remaining) == 6
    assert "ann" not in {info.user_id for info in remaining}
    assert maintenance.stats(db, manager).users == 1
    assert maintenance.verify(db).sound


def test_revoke_all_ends_everything_in_batches(db, manager):
    populate(db, manager, 25, users=("ann", None))
    calls: list[int] = []
    assert maintenance.revoke_all(db, manager, batch_size=10, progress=calls.append) == 25
    assert calls == [10, 20, 25]
    assert stored_ids(db, manager) == set()
    assert maintenance.stats(db, manager).stored_sessions == 0
    assert maintenance.verify(db).sound


@dataclass(frozen=True)
class InterruptingManager(SessionManager):
    """Raises KeyboardInterrupt from inside its 35th revoke: mid-batch."""

    calls: list[str] = field(default_factory=list, compare=False)

    def revoke(self, connection, session_id):
        self.calls.append(session_id)
        if len(self.calls) == 35:
            raise KeyboardInterrupt
        return super().revoke(connection, session_id)


@pytest.mark.parametrize("where", ["between-batches", "mid-batch"])
def test_interrupted_revoke_all_leaves_a_consistent_database(db, manager, where):
    populate(db, manager, 100, users=("ann", "bob", None))
    worker, progress = manager, None
    if where == "mid-batch":
        worker = InterruptingManager(idle_timeout=IDLE, max_lifetime=LIFETIME, clock=manager.clock)
    else:

        def progress(done: int) -> None:
            if done >= 30:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        maintenance.revoke_all(db, worker, batch_size=10, progress=progress)

    # Three batches committed either way; the fourth (mid-batch) was aborted.
    report = maintenance.verify(db)
    assert report.sound, report.problems
    assert len(stored_ids(db, manager)) == 70
    assert maintenance.stats(db, manager).stored_sessions == 70


@dataclass(frozen=True)
class MeddlingManager(SessionManager):
    """Before its first revoke, a "request" on another connection changes the victim."""

    db: DB | None = field(default=None, compare=False)
    meddled: list[str] = field(default_factory=list, compare=False)

    def revoke(self, connection, session_id):
        if not self.meddled:
            self.meddled.append(session_id)
            with self.db.transaction() as other:
                self.get(other, session_id)["cart"] = ["book"]
        return super().revoke(connection, session_id)


def test_revoke_all_retries_a_batch_that_conflicts_with_a_request(db, manager):
    """The batch read its snapshot before the request committed: it conflicts, then retries."""
    populate(db, manager, 12)
    worker = MeddlingManager(idle_timeout=IDLE, max_lifetime=LIFETIME, clock=manager.clock, db=db)
    calls: list[int] = []

    assert maintenance.revoke_all(db, worker, batch_size=5, progress=calls.append) == 12
    assert len(worker.meddled) == 1
    assert calls == [5, 10, 12]
    assert stored_ids(db, manager) == set()


def test_stats_reports_the_same_cached_objects_twice_in_a_row(db, manager):
    """The count used to be taken before stats' own walks, which then emptied the pooled
    connection they borrowed: each run changed the figure the next one reported."""
    with db.transaction() as conn:
        for _ in range(50):
            manager.new(conn)["x"] = 1
    with db.transaction() as conn:  # a request's connection, back in the pool with a warm cache
        container = manager.container(conn)
        assert sum(len(session) for session in container.sessions.values()) == 50
    first = maintenance.stats(db, manager).databases[0].cached_objects
    second = maintenance.stats(db, manager).databases[0].cached_objects
    assert first == second
