"""The session merge under real commits: FileStorage in this process, and a ZEO server.

Two connections of one database change one stored session from the same
snapshot and both commit; ZODB (on the ZEO server, with ZEO) calls
``Session._p_resolveConflict``. Then N threads on N connections commit
rounds of changes from one shared snapshot each (a barrier between the read
and the commit makes every round a real race, deterministically): changes to
their own keys all merge, changes to one shared key conflict and are retried,
and no acknowledged write is ever lost.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import transaction
from serverproc import ZeoProcess, free_port
from ZEO.StorageServer import StorageServer
from ZODB import DB
from ZODB.Connection import Connection
from ZODB.FileStorage import FileStorage
from ZODB.POSException import ConflictError

from zodbsession.core.db import open_db
from zodbsession.core.manager import SessionManager
from zodbsession.core.session import Session
from zodbsession.core.store import EXPIRY_SLOT_SECONDS, get_container
from zodbsession.ops.verify import verify
from zodbsession.serve.zeo import stop_in_loop

#: Bound, in seconds, of every wait on another thread: a broken run fails, never hangs.
WAIT = 60


class Backend:
    """One database, on a FileStorage or behind a ZEO server, that a test can reopen.

    Every connection it opened is aborted and closed before its database is.
    """

    def __init__(self, kind: str, tmp_path) -> None:
        self.kind = kind
        self.path = str(tmp_path / "Data.fs")
        self.server: StorageServer | None = None
        self.server_thread: threading.Thread | None = None
        self.process: ZeoProcess | None = None
        if kind == "zeo-process":
            self.process = ZeoProcess(tmp_path, {"ZODBSESSION_ZEO_STORAGE": self.path}).__enter__()
            self.port = self.process.port
        if kind == "zeo":
            self.port = free_port()
            self.server = StorageServer(("127.0.0.1", self.port), {"1": FileStorage(self.path)})
            self.server_thread = threading.Thread(target=self.server.loop, daemon=True)
            self.server_thread.start()
        self.connections: list[Connection] = []
        self.db = self._open()

    def _open(self) -> DB:
        if self.kind.startswith("zeo"):
            return open_db(f"zeo://127.0.0.1:{self.port}?wait_timeout={WAIT}", pool_size=16)
        return DB(FileStorage(self.path), pool_size=16)

    def connect(self) -> Connection:
        conn = self.db.open(transaction.TransactionManager())
        self.connections.append(conn)
        return conn

    def reopen(self) -> None:
        """Close the database and open it again: the FileStorage from its file, a new ZEO client."""
        self._close_db()
        self.db = self._open()

    def _close_db(self) -> None:
        for conn in self.connections:
            if conn.opened:
                conn.transaction_manager.abort()
                conn.close()
        self.connections.clear()
        self.db.close()

    def close(self) -> None:
        self._close_db()
        if self.server is not None:
            self.server.acceptor.event_loop.call_soon_threadsafe(stop_in_loop, self.server)
            self.server_thread.join(WAIT)
            self.server.close()
        if self.process is not None:
            self.process.__exit__(None, None, None)


@pytest.fixture(params=["filestorage", "zeo"])
def backend(request, tmp_path) -> Iterator[Backend]:
    backend = Backend(request.param, tmp_path)
    yield backend
    backend.close()


def store(backend: Backend, manager: SessionManager, data: dict) -> str:
    """Commit a new session holding *data*; returns its id."""
    conn = backend.connect()
    session = manager.new(conn)
    session.update(data)
    conn.transaction_manager.commit()
    return session.id


def stored_data(backend: Backend, session_id: str) -> dict | None:
    """The session's data as a fresh connection reads it (None: no such session)."""
    session = get_container(backend.connect()).get(session_id)
    return None if session is None else session.data()


def two_readers(backend: Backend, manager: SessionManager, session_id: str
                ) -> tuple[Connection, Session, Connection, Session]:
    one, two = backend.connect(), backend.connect()
    return one, manager.get(one, session_id), two, manager.get(two, session_id)


# -- two connections ------------------------------------------------------------------


def test_changes_to_different_keys_on_two_connections_both_survive_a_reopen(backend, manager):
    session_id = store(backend, manager, {"a": 1, "gone": True})
    one, first, two, second = two_readers(backend, manager, session_id)
    first["cart"] = ["book"]
    del first["gone"]
    second["theme"] = "dark"
    one.transaction_manager.commit()
    two.transaction_manager.commit()  # merged on the session record: no ConflictError

    backend.reopen()
    assert stored_data(backend, session_id) == {"a": 1, "cart": ["book"], "theme": "dark"}
    assert verify(backend.db).problems == ()


def test_the_connection_that_merged_reads_the_merged_session_next(backend, manager):
    """Its cached copy held only its own side: ZODB must drop it for the merged record."""
    session_id = store(backend, manager, {"a": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    first["b"] = 2
    second["c"] = 3
    one.transaction_manager.commit()
    two.transaction_manager.commit()
    two.transaction_manager.begin()
    assert second.data() == {"a": 1, "b": 2, "c": 3}
    assert manager.get(two, session_id) is second


@pytest.mark.parametrize(
    ("first_change", "second_change"),
    [("set", "set"), ("delete", "set"), ("set", "delete"), ("add", "add")],
    ids=["both-set", "deleted-then-set", "set-then-deleted", "both-added"],
)
def test_the_same_key_changed_on_two_connections_makes_the_second_commit_conflict(
        backend, manager, first_change, second_change):
    session_id = store(backend, manager, {"a": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    key = "new" if first_change == "add" else "a"
    for session, change, value in [(first, first_change, "first"), (second, second_change, "second")]:
        if change == "delete":
            del session[key]
        else:
            session[key] = value
        session["own-" + value] = True  # and a key of its own, which alone would merge
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()
    two.transaction_manager.abort()

    backend.reopen()
    expected = {"a": 1, "own-first": True}
    if first_change == "delete":
        del expected["a"]
    else:
        expected[key] = "first"
    assert stored_data(backend, session_id) == expected


def test_the_same_change_on_two_connections_still_conflicts(backend, manager):
    """Both read ``n == 1`` and wrote ``n = 2``: two increments, which a merge would make one."""
    session_id = store(backend, manager, {"n": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    first["n"] = second["n"] = first["n"] + 1
    second["b"] = 2
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()
    two.transaction_manager.abort()
    assert stored_data(backend, session_id) == {"n": 2}


def test_a_value_changed_in_place_and_saved_merges_like_any_change(backend, manager):
    session_id = store(backend, manager, {"cart": ["a"], "n": 0})
    one, first, two, second = two_readers(backend, manager, session_id)
    first["cart"].append("b")
    manager.save_changes(first)
    second["n"] = 1
    one.transaction_manager.commit()
    two.transaction_manager.commit()
    assert stored_data(backend, session_id) == {"cart": ["a", "b"], "n": 1}


def test_forget_changes_leaves_nothing_to_merge(backend, manager):
    session_id = store(backend, manager, {"a": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    first["b"] = 2
    manager.forget_changes(first)
    second["c"] = 3
    two.transaction_manager.commit()
    one.transaction_manager.commit()  # nothing left to commit on this side
    assert stored_data(backend, session_id) == {"a": 1, "c": 3}


def test_a_mapping_storage_resolves_nothing_so_different_keys_still_conflict(memory_db, manager):
    """What docs/conflicts.md says of ``memory://``: MappingStorage has no conflict resolution."""
    connections = [memory_db.open(transaction.TransactionManager())]
    try:
        session = manager.new(connections[0])
        session["a"] = 1
        connections[0].transaction_manager.commit()
        connections += [memory_db.open(transaction.TransactionManager()) for _ in range(2)]
        first, second = (manager.get(conn, session.id) for conn in connections[1:])
        first["b"], second["c"] = 2, 3
        connections[1].transaction_manager.commit()
        with pytest.raises(ConflictError):
            connections[2].transaction_manager.commit()
    finally:
        for conn in connections:
            conn.transaction_manager.abort()
            conn.close()


@pytest.fixture
def zeo_process(tmp_path) -> Iterator[Backend]:
    """A ``zodbsession zeo`` server process: the merge runs there, not in this process."""
    backend = Backend("zeo-process", tmp_path)
    yield backend
    backend.close()


def test_a_zodbsession_zeo_process_merges_different_keys_and_refuses_one_key(zeo_process, manager):
    session_id = store(zeo_process, manager, {"a": 1})
    one, first, two, second = two_readers(zeo_process, manager, session_id)
    first["b"], second["c"] = 2, 3
    one.transaction_manager.commit()
    two.transaction_manager.commit()

    one, first, two, second = two_readers(zeo_process, manager, session_id)
    first["a"], second["a"] = "first", "second"
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()
    two.transaction_manager.abort()

    zeo_process.reopen()
    assert stored_data(zeo_process, session_id) == {"a": "first", "b": 2, "c": 3}


# -- touches: the access time is in the session's record, and merges -------------------------

RESOLUTION = 60


def toucher_and_other(backend: Backend, manager: SessionManager, clock, session_id: str
                      ) -> tuple[Connection, Session, Connection, Session]:
    """Two connections from one snapshot: *other* read within the resolution (no touch), the toucher after."""
    other = backend.connect()
    found = manager.get(other, session_id)
    clock.advance(RESOLUTION)
    toucher = backend.connect()
    touched = manager.get(toucher, session_id)
    assert touched._p_changed and not touched.rewritten and not found._p_changed
    return toucher, touched, other, found


def commit_both(first: Connection, second: Connection) -> None:
    first.transaction_manager.commit()
    second.transaction_manager.commit()  # a ConflictError here fails the test


@pytest.mark.parametrize("touch_first", [True, False], ids=["touch-first", "write-first"])
def test_a_touch_racing_a_data_write_merges_and_keeps_both(backend, clock, touch_first):
    manager = SessionManager(clock=clock, access_resolution=RESOLUTION)
    session_id = store(backend, manager, {"a": 1})
    clock.advance(RESOLUTION / 2)
    toucher, _touched, writer, written = toucher_and_other(backend, manager, clock, session_id)
    written["b"] = 2
    commit_both(*((toucher, writer) if touch_first else (writer, toucher)))
    backend.reopen()
    session = get_container(backend.connect()).get(session_id)
    assert session.data() == {"a": 1, "b": 2}
    assert session.last_access == clock()


@pytest.mark.parametrize("later_first", [True, False], ids=["later-first", "earlier-first"])
def test_two_touches_merge_to_the_later_time(backend, clock, later_first):
    manager = SessionManager(clock=clock, access_resolution=RESOLUTION)
    session_id = store(backend, manager, {"a": 1})
    clock.advance(RESOLUTION)
    one, two = backend.connect(), backend.connect()
    assert manager.get(one, session_id).last_access == clock()  # touched now
    clock.advance(5)
    assert manager.get(two, session_id).last_access == clock()  # same snapshot, touched later
    commit_both(*((two, one) if later_first else (one, two)))
    session = get_container(backend.connect()).get(session_id)
    assert session.last_access == clock() and session.data() == {"a": 1}


@pytest.mark.parametrize("touch_first", [True, False], ids=["touch-first", "change-first"])
@pytest.mark.parametrize("change", ["rotate", "login", "set_expiry", "revoke"])
def test_a_touch_merges_with_a_change_of_the_bookkeeping(backend, clock, change, touch_first):
    """As with the access time in a record of its own: a touch changes no index, so it never
    conflicts; the other side's change stands, with the later access time."""
    manager = SessionManager(clock=clock, access_resolution=RESOLUTION)
    session_id = store(backend, manager, {"a": 1})
    toucher, _touched, other, found = toucher_and_other(backend, manager, clock, session_id)
    if change == "rotate":
        manager.rotate(found)
    elif change == "login":
        manager.set_user(found, "alice")
    elif change == "set_expiry":
        manager.set_expiry(found, 14 * 86400)
    else:
        assert manager.revoke(other, session_id)
    commit_both(*((toucher, other) if touch_first else (other, toucher)))
    container = get_container(backend.connect())
    if change == "revoke":
        assert container.get(session_id) is None
    else:
        session = container.get(found.id)
        assert session is not None and session.data() == {"a": 1}
        assert session.last_access == clock()
    if change == "rotate":
        assert container.get(session_id) is None
    if change == "login":
        assert container.user_session_ids("alice") == [session_id]
    assert verify(backend.db).problems == ()


def test_a_touch_racing_the_sweep_makes_it_conflict_and_keep_the_session(backend, clock):
    """The sweep decided by the access time it read: a touch committed meanwhile must be seen."""
    manager = SessionManager(clock=clock, access_resolution=RESOLUTION)
    session_id = store(backend, manager, {"a": 1})
    clock.advance(manager.idle_timeout + EXPIRY_SLOT_SECONDS)
    sweeper = backend.connect()
    container = get_container(sweeper)
    victim = container.get(session_id)
    assert not manager.is_live(victim)
    manager.invalidate(victim)  # as the sweep removes it
    victim._removed = "idle"
    toucher = backend.connect()
    get_container(toucher).get(session_id).touch(clock(), RESOLUTION)
    toucher.transaction_manager.commit()
    with pytest.raises(ConflictError):
        sweeper.transaction_manager.commit()
    sweeper.transaction_manager.abort()
    assert manager.expire(backend.connect()) == 0  # re-checked: used meanwhile, it stays
    assert stored_data(backend, session_id) == {"a": 1}


# -- removals, rotation and login racing a change ------------------------------------------


@pytest.mark.parametrize("removal_first", [True, False], ids=["removal-first", "write-first"])
@pytest.mark.parametrize("how", ["revoke", "invalidate", "revoke_user"])
def test_a_removal_racing_a_change_to_another_key_conflicts(backend, manager, how, removal_first):
    """The removal rewrites the session unchanged: a change must never merge into a removed session."""
    session_id = store(backend, manager, {"a": 1})
    if how == "revoke_user":
        conn = backend.connect()
        manager.set_user(manager.get(conn, session_id), "alice")
        conn.transaction_manager.commit()
    remover, victim, writer, written = two_readers(backend, manager, session_id)
    if how == "revoke":
        assert manager.revoke(remover, session_id)
    elif how == "invalidate":
        manager.invalidate(victim)
    else:
        assert manager.revoke_user(remover, "alice") == 1
    written["other"] = "written"
    first, second = (remover, writer) if removal_first else (writer, remover)
    first.transaction_manager.commit()
    with pytest.raises(ConflictError):
        second.transaction_manager.commit()
    second.transaction_manager.abort()

    backend.reopen()
    assert stored_data(backend, session_id) == (None if removal_first else {"a": 1, "other": "written"})
    assert verify(backend.db).problems == ()


@pytest.mark.parametrize("logout_first", [True, False], ids=["logout-first", "change-first"])
def test_a_change_then_logout_merges_with_a_change_of_another_key_and_the_session_is_gone(
        backend, manager, logout_first):
    """As if the other change had come just before the logout: the session ends either way."""
    session_id = store(backend, manager, {"a": 1})
    leaver, leaving, writer, written = two_readers(backend, manager, session_id)
    leaving["bye"] = True
    manager.invalidate(leaving)
    written["b"] = 2
    for conn in (leaver, writer) if logout_first else (writer, leaver):
        conn.transaction_manager.commit()
    assert stored_data(backend, session_id) is None
    assert manager.get(backend.connect(), session_id) is None
    assert verify(backend.db).problems == ()


def test_a_sweep_committed_before_a_change_to_another_key_makes_the_change_conflict(backend, clock):
    manager = SessionManager(clock=clock)
    session_id = store(backend, manager, {"a": 1})
    writer = backend.connect()
    manager.get(writer, session_id)["other"] = "late"  # live when it read it
    assert manager.expire(backend.connect(), now=clock() + manager.idle_timeout + EXPIRY_SLOT_SECONDS) == 1
    with pytest.raises(ConflictError):
        writer.transaction_manager.commit()
    writer.transaction_manager.abort()
    assert stored_data(backend, session_id) is None


@pytest.mark.parametrize("rotation_first", [True, False], ids=["rotation-first", "write-first"])
def test_a_rotation_conflicts_with_a_concurrent_change_of_another_key(backend, manager, rotation_first):
    """The writer found the session by the old id: after the rotation, its retry finds nothing there."""
    session_id = store(backend, manager, {"a": 1})
    rotator, rotated, writer, written = two_readers(backend, manager, session_id)
    new_id = manager.rotate(rotated).id
    written["b"] = 2
    first, second = (rotator, writer) if rotation_first else (writer, rotator)
    first.transaction_manager.commit()
    with pytest.raises(ConflictError):
        second.transaction_manager.commit()
    second.transaction_manager.abort()

    backend.reopen()
    if rotation_first:
        assert (stored_data(backend, session_id), stored_data(backend, new_id)) == (None, {"a": 1})
    else:
        assert (stored_data(backend, session_id), stored_data(backend, new_id)) == ({"a": 1, "b": 2}, None)
    assert verify(backend.db).problems == ()


def test_two_rotations_of_one_session_conflict(backend, manager):
    session_id = store(backend, manager, {"a": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    manager.rotate(first)
    manager.rotate(second)
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()
    two.transaction_manager.abort()
    assert verify(backend.db).problems == ()


@pytest.mark.parametrize("login_first", [True, False], ids=["login-first", "change-first"])
def test_a_login_conflicts_with_any_concurrent_change_of_the_session(backend, manager, login_first):
    session_id = store(backend, manager, {"a": 1})
    logger, logging_in, writer, written = two_readers(backend, manager, session_id)
    manager.set_user(logging_in, "alice")
    written["b"] = 2
    first, second = (logger, writer) if login_first else (writer, logger)
    first.transaction_manager.commit()
    with pytest.raises(ConflictError):
        second.transaction_manager.commit()
    second.transaction_manager.abort()
    assert verify(backend.db).problems == ()


def test_a_login_racing_a_change_and_a_revoke_in_one_request_conflicts(backend, manager):
    """Found by test_merge_serializable: merged, the user index named the revoked session."""
    session_id = store(backend, manager, {"a": 1})
    revoker, revoked, logger, logging_in = two_readers(backend, manager, session_id)
    del revoked["a"]
    assert manager.revoke(revoker, session_id)
    manager.set_user(logging_in, "alice")
    revoker.transaction_manager.commit()
    with pytest.raises(ConflictError):
        logger.transaction_manager.commit()
    logger.transaction_manager.abort()
    assert stored_data(backend, session_id) is None
    assert verify(backend.db).problems == ()


@pytest.mark.parametrize("users", [("alice", "bob"), ("alice", "alice")], ids=["two-users", "one-user"])
def test_two_logins_on_one_session_conflict(backend, manager, users):
    session_id = store(backend, manager, {"a": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    manager.set_user(first, users[0])
    manager.set_user(second, users[1])
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()
    two.transaction_manager.abort()
    assert get_container(backend.connect()).get(session_id).user_id == users[0]


@pytest.mark.parametrize(
    ("first_change", "second_change"),
    [("rotate", "login"), ("login", "rotate"), ("rotate", "shorten-expiry"), ("login", "shorten-expiry")],
)
def test_bookkeeping_changed_on_both_sides_conflicts_so_the_indexes_stay_true(
        backend, manager, first_change, second_change):
    """The container indexes a session by id, owner and deadline, each side from its own snapshot.

    A rotation merged with a login would leave the user index naming the old
    id; a rotation merged with a shortened expiry would file the deadline
    under the old id, and the sweep would come late.
    """
    session_id = store(backend, manager, {"a": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    for session, change in [(first, first_change), (second, second_change)]:
        if change == "rotate":
            manager.rotate(session)
        elif change == "login":
            manager.set_user(session, "alice")
        else:
            manager.set_expiry(session, 60)
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()
    two.transaction_manager.abort()
    assert verify(backend.db).problems == ()


# -- the session features: flash queues, the CSRF token, the session's own expiry -----------


def test_flashes_to_different_queues_merge_and_to_one_queue_conflict(backend, manager):
    session_id = store(backend, manager, {"a": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    first.flash("saved", queue="info")
    second.flash("careful", queue="warning")
    one.transaction_manager.commit()
    two.transaction_manager.commit()

    one, first, two, second = two_readers(backend, manager, session_id)
    first.flash("again", queue="info")
    second.flash("and again", queue="info")
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()  # the retry appends to the committed queue
    two.transaction_manager.abort()
    reader = backend.connect()
    assert manager.get(reader, session_id).peek_flash("info") == ["saved", "again"]
    assert manager.get(reader, session_id).peek_flash("warning") == ["careful"]


@pytest.mark.parametrize("other", ["pop", "flash"])
def test_popping_a_flash_queue_conflicts_with_another_request_using_that_queue(backend, manager, other):
    """Two pops would both show the messages; a pop and a flash would drop the new message."""
    session_id = store(backend, manager, {"a": 1})
    conn = backend.connect()
    manager.get(conn, session_id).flash("once")
    conn.transaction_manager.commit()
    one, first, two, second = two_readers(backend, manager, session_id)
    assert first.pop_flash() == ["once"]
    if other == "pop":
        assert second.pop_flash() == ["once"]
    else:
        second.flash("next")
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()
    two.transaction_manager.abort()


def test_two_first_csrf_tokens_conflict_and_the_retry_reads_the_committed_one(backend, manager):
    session_id = store(backend, manager, {"a": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    token = first.get_csrf_token()
    assert second.get_csrf_token() != token
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()
    two.transaction_manager.abort()
    two.transaction_manager.begin()
    assert manager.get(two, session_id).get_csrf_token() == token


def test_checking_the_csrf_token_writes_nothing_so_never_conflicts(backend, manager):
    session_id = store(backend, manager, {"a": 1})
    conn = backend.connect()
    token = manager.get(conn, session_id).new_csrf_token()
    conn.transaction_manager.commit()
    one, first, two, second = two_readers(backend, manager, session_id)
    assert first.check_csrf_token(token)
    assert first._p_changed is False
    second["b"] = 2
    two.transaction_manager.commit()
    one.transaction_manager.commit()


def test_an_expiry_set_on_one_side_conflicts_with_a_change_on_the_other(backend, manager):
    session_id = store(backend, manager, {"a": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    manager.set_expiry(first, 14 * 86400)
    second["b"] = 2
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()
    two.transaction_manager.abort()

    backend.reopen()
    session = manager.get(backend.connect(), session_id)
    assert session.data() == {"a": 1}
    assert manager.get_expiry_age(session) == 14 * 86400
    assert verify(backend.db).problems == ()


def test_two_expiries_set_on_one_session_conflict(backend, manager):
    session_id = store(backend, manager, {"a": 1})
    one, first, two, second = two_readers(backend, manager, session_id)
    manager.set_expiry(first, 3600)
    manager.set_expiry(second, 0)
    one.transaction_manager.commit()
    with pytest.raises(ConflictError):
        two.transaction_manager.commit()
    two.transaction_manager.abort()
    assert manager.get(backend.connect(), session_id)._expiry == ("idle", 3600.0)


# -- N threads, one session ----------------------------------------------------------------

THREADS, ROUNDS = 8, 10


class Ticker:
    """A clock that moves one second per reading, so every request records its access."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._ticks = itertools.count(1)
        self._lock = threading.Lock()
        self.start = start
        self.last = start

    def __call__(self) -> float:
        with self._lock:
            self.last = self.start + next(self._ticks)
            return self.last


@dataclass
class Tally:
    acknowledged: list[tuple[int, int]] = field(default_factory=list)  # (thread, round) committed
    conflicts: int = 0
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


Change = Callable[[Session, int, int], None]


def race(backend: Backend, manager: SessionManager, session_id: str, change: Change) -> Tally:
    """THREADS threads, ROUNDS rounds: all read one snapshot, then all commit, retrying conflicts.

    A barrier between the reads and the commits makes every round a race of
    all the threads. A retry reads again and re-applies the change; it can
    only conflict after another thread committed, so THREADS * ROUNDS + 1
    attempts always suffice.
    """
    barrier = threading.Barrier(THREADS, timeout=WAIT)
    tally = Tally()
    connections = [backend.connect() for _ in range(THREADS)]

    def attempt(conn: Connection, index: int, round_: int) -> None:
        conn.transaction_manager.begin()
        change(manager.get(conn, session_id), index, round_)

    def worker(index: int) -> None:
        conn = connections[index]
        try:
            for round_ in range(ROUNDS):
                attempt(conn, index, round_)
                barrier.wait()  # every thread read this round's snapshot before anyone commits
                for _ in range(THREADS * ROUNDS + 1):
                    try:
                        conn.transaction_manager.commit()
                    except ConflictError:
                        conn.transaction_manager.abort()
                        with tally.lock:
                            tally.conflicts += 1
                        attempt(conn, index, round_)
                    else:
                        with tally.lock:
                            tally.acknowledged.append((index, round_))
                        break
                else:
                    raise AssertionError(f"thread {index} gave up in round {round_}")
                barrier.wait()
        except BaseException as error:
            tally.errors.append(error)
            barrier.abort()

    workers = [threading.Thread(target=worker, args=(index,)) for index in range(THREADS)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(WAIT * ROUNDS)
    assert not [thread for thread in workers if thread.is_alive()], "a worker hung"
    assert tally.errors == []
    return tally


def own_key(session: Session, index: int, round_: int) -> None:
    session[f"t{index}"] = [*session.get(f"t{index}", []), round_]


def shared_key(session: Session, index: int, round_: int) -> None:
    session["shared"] = session.get("shared", 0) + 1


def both_keys(session: Session, index: int, round_: int) -> None:
    own_key(session, index, round_)
    shared_key(session, index, round_)


@pytest.fixture
def ticking_manager() -> SessionManager:
    """Every read of a session also records its access (a write of its record, which merges)."""
    return SessionManager(clock=Ticker(), access_resolution=0, idle_timeout=10**6, max_lifetime=10**7)


def test_threads_changing_their_own_keys_of_one_session_never_conflict_and_lose_nothing(
        backend, ticking_manager):
    session_id = store(backend, ticking_manager, {"a": 1})
    tally = race(backend, ticking_manager, session_id, own_key)

    assert tally.conflicts == 0  # every commit merged, the access times too
    assert len(tally.acknowledged) == THREADS * ROUNDS
    backend.reopen()
    expected = {"a": 1, **{f"t{index}": list(range(ROUNDS)) for index in range(THREADS)}}
    assert stored_data(backend, session_id) == expected
    _assert_bookkeeping_intact(backend, ticking_manager, session_id)


@pytest.mark.parametrize("change", [shared_key, both_keys], ids=["shared-key", "own-and-shared-keys"])
def test_threads_changing_one_shared_key_conflict_and_retry_and_lose_no_update(
        backend, ticking_manager, change):
    session_id = store(backend, ticking_manager, {"a": 1})
    tally = race(backend, ticking_manager, session_id, change)

    # Each round all threads read one snapshot: all but the first committer conflict at least once.
    assert tally.conflicts >= (THREADS - 1) * ROUNDS
    assert len(tally.acknowledged) == THREADS * ROUNDS
    backend.reopen()
    data = stored_data(backend, session_id)
    assert data.pop("shared") == THREADS * ROUNDS  # one per acknowledged commit: no lost update
    if change is both_keys:
        assert data == {"a": 1, **{f"t{index}": list(range(ROUNDS)) for index in range(THREADS)}}
    else:
        assert data == {"a": 1}
    _assert_bookkeeping_intact(backend, ticking_manager, session_id)


def _assert_bookkeeping_intact(backend: Backend, manager: SessionManager, session_id: str) -> None:
    """The access time is the latest any request recorded; the container and its indexes are sound."""
    container = get_container(backend.connect())
    # The last clock reading belongs to a commit that succeeded: a conflicted attempt reads again.
    assert container.get(session_id).last_access == manager.clock.last
    assert len(container) == 1 and list(container.sessions) == [session_id]
    assert verify(backend.db).problems == ()


def test_threads_on_own_keys_never_conflict_through_a_zodbsession_zeo_process(zeo_process, ticking_manager):
    session_id = store(zeo_process, ticking_manager, {"a": 1})
    tally = race(zeo_process, ticking_manager, session_id, own_key)
    assert tally.conflicts == 0
    zeo_process.reopen()
    expected = {"a": 1, **{f"t{index}": list(range(ROUNDS)) for index in range(THREADS)}}
    assert stored_data(zeo_process, session_id) == expected
    _assert_bookkeeping_intact(zeo_process, ticking_manager, session_id)
