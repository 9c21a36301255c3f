"""Concurrent transactions on one session, replayed deterministically.

Each test opens two or more connections of one FileStorage database, each with
its own transaction manager, and interleaves them in one thread: read in
both, commit one, then the other. Where a sweep has to be interrupted between
its reads and its commit, a transaction synchronizer on the sweep's manager
commits the other transaction at the sweep's ``beforeCompletion``.

What must hold: touches merge, creations merge, changes to one data key
conflict (never last-writer-wins) while changes to different keys merge, a
sweep or a revoke racing a data change conflicts, and a sweep never deletes a
session touched meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from ZODB.POSException import ConflictError

from zodbsession.core.manager import SessionManager
from zodbsession.core.store import EXPIRY_SLOT_SECONDS, get_container

IDLE = 1800.0


class CommitDuring:
    """A synchronizer that runs *action* once, as its transaction starts to commit.

    It counts the commit attempts of the transaction manager it is
    registered with (aborts do not count).
    """

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.commits = 0

    def _before_commit(self) -> None:
        self.commits += 1
        if self.commits == 1:
            self.action()

    def newTransaction(self, txn) -> None:  # noqa: N802 (transaction's interface)
        txn.addBeforeCommitHook(self._before_commit)

    def beforeCompletion(self, txn) -> None:  # noqa: N802
        pass

    def afterCompletion(self, txn) -> None:  # noqa: N802
        pass


def _managers(clock, *offsets: float) -> list[SessionManager]:
    """Managers whose clocks run *offset* seconds after the shared fake clock."""
    return [SessionManager(clock=lambda o=o: clock() + o) for o in offsets]


@pytest.fixture
def stored(manager, db, connect):
    """The id of a committed session holding ``{"a": 1}``."""
    conn = connect(db)
    session = manager.new(conn)
    session["a"] = 1
    conn.transaction_manager.commit()
    return session.id


def _read(connect, db, manager, session_id):
    conn = connect(db)
    return conn, manager.get(conn, session_id)


# -- (1) touches merge -------------------------------------------------------------


@pytest.mark.parametrize("later_commits_first", [True, False], ids=["later-first", "later-last"])
def test_concurrent_touches_both_commit_and_keep_the_later_time(
    db, connect, clock, stored, later_commits_first
):
    early, late = _managers(clock, 100, 200)
    conn_early, s_early = _read(connect, db, early, stored)
    conn_late, s_late = _read(connect, db, late, stored)
    assert s_early.last_access == clock() + 100
    assert s_late.last_access == clock() + 200

    order = [conn_late, conn_early] if later_commits_first else [conn_early, conn_late]
    for conn in order:
        conn.transaction_manager.commit()  # neither raises

    reader = connect(db)
    assert get_container(reader).get(stored).last_access == clock() + 200


# -- (2) creations merge ------------------------------------------------------------


def test_concurrent_creations_of_different_sessions_both_commit(manager, db, connect, stored):
    """Same clock, so every new session lands in the same expiry slot.

    Eight pairs keep every bucket below its split size: a bucket split
    conflicts by design of BTrees and is left to the publisher's retry.
    """
    first, second = connect(db), connect(db)
    made = []
    for pair in range(8):
        one, two = manager.new(first), manager.new(second)
        one["pair"] = two["pair"] = pair
        first.transaction_manager.commit()
        second.transaction_manager.commit()  # merges; no ConflictError
        made += [one.id, two.id]

    reader = connect(db)
    container = get_container(reader)
    assert len(container) == 17
    assert len({slot for slot, _ in container.expiry}) == 1
    assert all(manager.get(reader, session_id) is not None for session_id in made)


# -- (3) data changes conflict ---------------------------------------------------------


def test_concurrent_data_changes_conflict_and_first_change_survives(
    manager, db, connect, stored
):
    conn_a, s_a = _read(connect, db, manager, stored)
    conn_b, s_b = _read(connect, db, manager, stored)
    s_a["a"] = "from A"
    s_b["a"] = "from B"
    conn_a.transaction_manager.commit()
    with pytest.raises(ConflictError):
        conn_b.transaction_manager.commit()
    conn_b.transaction_manager.abort()

    assert manager.get(connect(db), stored)["a"] == "from A"


def test_data_change_conflicts_with_concurrent_touch_and_data_change(
    db, connect, clock, stored
):
    """A touch plus a change of one key on each side still conflicts on the data."""
    early, late = _managers(clock, 100, 200)
    conn_a, s_a = _read(connect, db, early, stored)
    conn_b, s_b = _read(connect, db, late, stored)
    s_a["a"] = "from A"
    s_b["a"] = "from B"
    conn_a.transaction_manager.commit()
    with pytest.raises(ConflictError):
        conn_b.transaction_manager.commit()
    conn_b.transaction_manager.abort()

    assert get_container(connect(db)).get(stored).data() == {"a": "from A"}


def test_touches_and_changes_to_different_keys_on_each_side_all_survive(
    db, connect, clock, stored
):
    """The session record merges by key (``zodbsession.core.merge``), the access time to the later."""
    early, late = _managers(clock, 100, 200)
    conn_a, s_a = _read(connect, db, early, stored)
    conn_b, s_b = _read(connect, db, late, stored)
    s_a["a"] = "from A"
    s_b["b"] = "from B"
    conn_a.transaction_manager.commit()
    conn_b.transaction_manager.commit()

    survivor = get_container(connect(db)).get(stored)
    assert survivor.data() == {"a": "from A", "b": "from B"}
    assert survivor.last_access == clock() + 200


# -- (4) the expiry race ----------------------------------------------------------------


@pytest.fixture
def sweep_time(clock):
    """A moment when the ``stored`` session's entry is due and it has expired."""
    return clock() + IDLE + EXPIRY_SLOT_SECONDS


def test_data_write_conflicts_with_a_sweep_committed_first(
    manager, db, connect, clock, stored, sweep_time
):
    writer, session = _read(connect, db, manager, stored)  # live at its own time
    session["a"] = "late write"

    sweeper = connect(db)
    assert manager.expire(sweeper, now=sweep_time) == 1

    with pytest.raises(ConflictError):
        writer.transaction_manager.commit()
    writer.transaction_manager.abort()
    assert get_container(connect(db)).get(stored) is None


def test_sweep_conflicts_with_a_data_write_committed_during_it(
    manager, db, connect, clock, stored, sweep_time
):
    writer, session = _read(connect, db, manager, stored)
    session["a"] = "late write"
    sweeper = connect(db)
    synch = CommitDuring(writer.transaction_manager.commit)
    sweeper.transaction_manager.registerSynch(synch)

    with pytest.raises(ConflictError):
        manager.expire(sweeper, now=sweep_time, max_attempts=1)

    assert synch.commits == 1
    assert get_container(connect(db)).get(stored)["a"] == "late write"


def test_sweep_spares_a_session_touched_during_it(db, connect, clock, stored, sweep_time):
    """The touch commits between the sweep's read and its commit.

    The sweep read the old access time and would delete the session; its
    batch must conflict, be retried within ``expire()`` and see the touch.
    """
    (toucher_manager,) = _managers(clock, IDLE - 1)  # just before the deadline
    toucher, session = _read(connect, db, toucher_manager, stored)
    assert session is not None
    sweeper = connect(db)
    synch = CommitDuring(toucher.transaction_manager.commit)
    sweeper.transaction_manager.registerSynch(synch)

    assert toucher_manager.expire(sweeper, now=sweep_time) == 0

    assert synch.commits == 2  # the first batch conflicted and was retried
    reader = connect(db)
    survivor = get_container(reader).get(stored)
    assert survivor is not None
    assert survivor.last_access == clock() + IDLE - 1
    assert survivor.data() == {"a": 1}


def test_sweep_batch_conflicts_on_a_touch_committed_during_it(
    manager, db, connect, clock, stored, sweep_time
):
    """Without its retry, the sweep's batch raises instead of deleting."""
    (toucher_manager,) = _managers(clock, IDLE - 1)
    toucher, _ = _read(connect, db, toucher_manager, stored)
    sweeper = connect(db)
    synch = CommitDuring(toucher.transaction_manager.commit)
    sweeper.transaction_manager.registerSynch(synch)

    with pytest.raises(ConflictError):
        manager.expire(sweeper, now=sweep_time, max_attempts=1)

    assert synch.commits == 1
    assert get_container(connect(db)).get(stored) is not None


# -- (5) revoke racing a data write -------------------------------------------------------


@pytest.mark.parametrize("revoke_first", [True, False], ids=["revoke-first", "write-first"])
def test_revoke_and_data_write_conflict(manager, db, connect, stored, revoke_first):
    writer, session = _read(connect, db, manager, stored)
    session["a"] = "written"
    revoker = connect(db)
    assert manager.revoke(revoker, stored) is True

    first, second = (revoker, writer) if revoke_first else (writer, revoker)
    first.transaction_manager.commit()
    with pytest.raises(ConflictError):
        second.transaction_manager.commit()
    second.transaction_manager.abort()

    found = get_container(connect(db)).get(stored)
    if revoke_first:
        assert found is None
    else:
        assert found["a"] == "written"


def test_revoke_user_and_data_write_conflict(manager, db, connect, stored):
    setter = connect(db)
    manager.set_user(manager.get(setter, stored), "alice")
    setter.transaction_manager.commit()

    writer, session = _read(connect, db, manager, stored)
    session["a"] = "written"
    revoker = connect(db)
    assert manager.revoke_user(revoker, "alice") == 1
    revoker.transaction_manager.commit()
    with pytest.raises(ConflictError):
        writer.transaction_manager.commit()
    writer.transaction_manager.abort()
    assert get_container(connect(db)).get(stored) is None


# -- (6) nothing acknowledged is lost -----------------------------------------------------


def _append(manager, conn, session_id, item):
    """One request: begin (seeing every commit so far), read, change."""
    conn.transaction_manager.begin()
    session = manager.get(conn, session_id)
    session.setdefault("items", [])
    session["items"] = [*session["items"], item]


def test_retried_conflicts_lose_no_acknowledged_write(manager, db, connect, clock, stored):
    """Pairs of requests append to one session; the loser of each pair retries.

    Every write whose commit returned must be in the final state, once.
    """
    conns = [connect(db), connect(db)]
    acknowledged: list[str] = []
    conflicts = 0
    for round_ in range(6):
        clock.advance(61)  # every request also touches
        items = [f"{round_}-a", f"{round_}-b"]
        for conn, item in zip(conns, items, strict=True):
            _append(manager, conn, stored, item)
        for conn, item in zip(conns, items, strict=True):
            for _attempt in range(3):
                try:
                    conn.transaction_manager.commit()
                except ConflictError:
                    conflicts += 1
                    _append(manager, conn, stored, item)
                else:
                    acknowledged.append(item)
                    break
    assert conflicts == 6  # the second request of every round
    final = manager.get(connect(db), stored)
    assert final["items"] == acknowledged
    assert len(acknowledged) == 12
