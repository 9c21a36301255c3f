"""GroupCommitFileStorage: commits share fsyncs, readers see only synced data, conflicts at once.

The leader's fsync is held on an event (a subclass whose ``_sync_file``
waits for the test) so that every interleaving below happens for certain,
not by chance of timing; the fsync itself is the real one.
"""

from __future__ import annotations

import os
import threading

import pytest
import transaction
from persistent.mapping import PersistentMapping
from ZODB import DB
from ZODB.POSException import ConflictError

from zodbsession.core.groupcommit import GroupCommitFileStorage, read_synced_offset
from zodbsession.core.tailrepair import check_tail, open_repaired

WAIT = 30  # generous bound for events that do happen


class HeldSync(GroupCommitFileStorage):
    """Each fsync waits until the test lets it go; counts who is waiting."""

    def __init__(self, *args, **kw):
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        super().__init__(*args, **kw)

    def _sync_file(self) -> int:
        self.entered.release()
        assert self.gate.wait(WAIT)
        return super()._sync_file()


@pytest.fixture
def db(tmp_path):
    storage = HeldSync(str(tmp_path / "Data.fs"))
    database = DB(storage)
    with database.transaction() as conn:
        for key in "abcdef":
            conn.root()[key] = PersistentMapping(n=0)
    while storage.entered.acquire(blocking=False):
        pass
    yield database
    storage.gate.set()
    database.close()


def _increment(db, key, errors=None):
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        tm.begin()
        conn.root()[key]["n"] += 1
        tm.commit()
    except Exception as exc:
        tm.abort()
        if errors is None:
            raise
        errors.append(exc)
    finally:
        conn.close()


def _read(db, key):
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        tm.begin()
        return conn.root()[key]["n"]
    finally:
        tm.abort()
        conn.close()


def _commit_in_thread(db, key, errors=None):
    thread = threading.Thread(target=_increment, args=(db, key, errors), daemon=True)
    thread.start()
    return thread


def _wait_commits(storage, count):
    condition = threading.Event()
    for _ in range(WAIT * 100):
        if storage.commits >= count:
            return
        condition.wait(0.01)
    raise AssertionError(f"only {storage.commits} commits finished")


def test_a_commit_is_seen_by_readers_only_once_its_fsync_is_done(db):
    storage = db.storage
    storage.gate.clear()
    before = storage.lastTransaction()
    writer = _commit_in_thread(db, "a")
    assert storage.entered.acquire(timeout=WAIT)  # written, its leader in the fsync
    assert writer.is_alive()  # not acknowledged
    assert _read(db, "a") == 0
    assert storage.lastTransaction() == before
    storage.gate.set()
    writer.join(WAIT)
    assert not writer.is_alive()
    assert _read(db, "a") == 1
    assert storage.lastTransaction() > before


def test_a_conflicting_commit_sees_an_unsynced_commit_at_once(db):
    storage = db.storage
    storage.gate.clear()
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    tm.begin()
    conn.root()["a"]["n"] += 10  # from the snapshot before the writer's commit
    writer = _commit_in_thread(db, "a")
    assert storage.entered.acquire(timeout=WAIT)
    with pytest.raises(ConflictError):
        tm.commit()
    tm.abort()
    conn.close()
    storage.gate.set()
    writer.join(WAIT)
    assert _read(db, "a") == 1


def test_commits_written_while_a_leader_waits_share_its_fsync(db):
    storage = db.storage
    storage.gate.clear()
    fsyncs, commits = storage.fsyncs, storage.commits
    first = _commit_in_thread(db, "a")
    assert storage.entered.acquire(timeout=WAIT)  # the first leader holds its fsync
    others = [_commit_in_thread(db, key) for key in "bcdef"]
    _wait_commits(storage, commits + 6)  # all written, five waiting for a sync
    storage.gate.set()
    for thread in [first, *others]:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert storage.commits - commits == 6
    # The held leader takes its target when its fsync starts: that one covers all six.
    assert storage.fsyncs - fsyncs == 1
    assert [_read(db, key) for key in "abcdef"] == [1] * 6


def test_the_synced_offset_covers_every_acknowledged_commit(db):
    storage = db.storage
    for key in "abc":
        _increment(db, key)
        assert read_synced_offset(storage.getName()) == os.path.getsize(storage.getName())


def test_interval_mode_publishes_at_once_and_syncs_on_close(tmp_path):
    path = str(tmp_path / "Data.fs")
    storage = GroupCommitFileStorage(path, fsync="interval", fsync_interval=300)
    database = DB(storage)
    fsyncs = storage.fsyncs
    with database.transaction() as conn:
        conn.root()["a"] = PersistentMapping(n=1)
    assert storage.fsyncs == fsyncs  # nothing synced yet: the interval is 300 s
    assert _read(database, "a") == 1
    assert read_synced_offset(path) < os.path.getsize(path)
    database.close()
    assert read_synced_offset(path) == os.path.getsize(path)


def test_interval_mode_syncs_in_the_background(tmp_path):
    path = str(tmp_path / "Data.fs")
    storage = GroupCommitFileStorage(path, fsync="interval", fsync_interval=0.05)
    database = DB(storage)
    try:
        with database.transaction() as conn:
            conn.root()["a"] = PersistentMapping(n=1)
        size = os.path.getsize(path)
        done = threading.Event()
        for _ in range(WAIT * 100):
            if read_synced_offset(path) == size:
                done.set()
                break
            done.wait(0.01)
        assert done.is_set()
    finally:
        database.close()


def test_an_unknown_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fsync must be one of"):
        GroupCommitFileStorage(str(tmp_path / "Data.fs"), fsync="never")


# -- the torn tail ------------------------------------------------------------------------


def _database_with_unsynced_tail(tmp_path, commits=6):
    """A file of *commits* transactions whose last ones the marker calls unsynced: their offsets."""
    path = str(tmp_path / "Data.fs")
    database = DB(open_repaired(path))
    ends = []
    for n in range(commits):
        with database.transaction() as conn:
            conn.root()[n] = PersistentMapping(n=n)
        ends.append(os.path.getsize(path))
    database.close()
    with open(path + ".synced", "r+b") as marker:
        marker.write(ends[2].to_bytes(8, "big"))  # as if only three were synced
    return path, ends


def _keys(path):
    database = DB(open_repaired(path))
    try:
        with database.transaction() as conn:
            return sorted(k for k in conn.root() if isinstance(k, int))
    finally:
        database.close()


@pytest.mark.parametrize("damage", ["zeros-to-end", "garbage-to-end", "hole", "torn-pickle"])
def test_a_torn_tail_past_the_synced_offset_is_cut_at_its_first_damaged_transaction(tmp_path, damage):
    path, ends = _database_with_unsynced_tail(tmp_path)
    size = os.path.getsize(path)
    with open(path, "r+b") as data:
        if damage == "zeros-to-end":
            data.seek(ends[3] + 5)
            data.write(b"\0" * (size - ends[3] - 5))
        elif damage == "garbage-to-end":
            data.seek(ends[3] + 5)
            data.write(os.urandom(size - ends[3] - 5))
        elif damage == "hole":  # the end intact: stock FileStorage refuses such a file
            data.seek(ends[3] + 5)
            data.write(b"\0" * 30)
        else:  # the last bytes of a record's pickle: no header notices
            data.seek(ends[4] - 8 - 3)
            data.write(b"\0\0\0")
    assert check_tail(path, ends[2]) < size
    assert _keys(path) == [0, 1, 2, 3]
    assert os.path.getsize(path) == ends[3]
    assert [n for n in os.listdir(tmp_path) if ".torn-" in n]  # the cut bytes kept aside


def test_damage_before_the_synced_offset_is_not_cut(tmp_path):
    from ZODB.FileStorage.FileStorage import CorruptedTransactionError

    path, ends = _database_with_unsynced_tail(tmp_path)
    with open(path, "r+b") as data:
        data.seek(ends[0] + 5)
        data.write(b"\0" * 30)  # inside a synced transaction
    os.remove(path + ".index")  # so that opening scans the whole file, and meets the damage
    with pytest.raises(CorruptedTransactionError):
        open_repaired(path)
    assert not [n for n in os.listdir(tmp_path) if ".torn-" in n]


def test_a_synced_offset_that_ends_no_transaction_is_not_trusted(tmp_path):
    """As after a pack renamed a smaller file in before its first sync: nothing is cut."""
    path, ends = _database_with_unsynced_tail(tmp_path)
    with open(path + ".synced", "r+b") as marker:
        marker.write((ends[2] + 7).to_bytes(8, "big"))
    size = os.path.getsize(path)
    assert _keys(path) == [0, 1, 2, 3, 4, 5]
    assert os.path.getsize(path) == size


def test_last_transaction_is_read_without_waiting_for_the_storage_lock(tmp_path):
    """A begin (the ASGI door's, on its event loop) never waits behind a commit holding the lock."""
    storage = GroupCommitFileStorage(str(tmp_path / "Data.fs"))
    db = DB(storage)
    try:
        with db.transaction() as conn:
            conn.root()["x"] = 1
        published = storage.lastTransaction()
        held, release = threading.Event(), threading.Event()

        def hold_the_lock() -> None:
            with storage._lock:  # as a commit's vote or finish holds it while writing
                held.set()
                release.wait()

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        held.wait()
        seen: list[bytes] = []
        reader = threading.Thread(target=lambda: seen.append(storage.lastTransaction()))
        try:
            reader.start()
            reader.join(10)  # a bound against a hang: under the lock it would wait for release()
            assert seen == [published]
        finally:
            release.set()
            holder.join()
            reader.join()
    finally:
        db.close()
