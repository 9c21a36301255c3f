"""What the manager, the publisher and the janitor report to ``manager.observers``.

Session events are delivered only after the transaction that caused them
committed, in order, once; the publisher reports how every request ended
(one ``RequestOutcome`` per row of its decision table) and every retry; the
janitor reports each sweep. A subscriber that raises is logged and breaks
nothing. Real databases, a real publisher through WebTest, no mocks: the
few failing data managers below are real participants of a real two-phase
commit.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import transaction
import webtest
from commitkit import FinishFails, VoteFails
from ZODB import DB
from ZODB.POSException import ConflictError

from zodbsession import SessionManager, SessionPublisher
from zodbsession.core.observe import Observer, SessionEvent
from zodbsession.ops import maintenance
from zodbsession.ops.janitor import Janitor
from zodbsession.testing import ManualClock

COOKIE = "zodbsession"


class Recorder(Observer):
    """Keeps every report it gets, in order, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[SessionEvent] = []
        self.finished: list[tuple[str, int, float | None]] = []
        self.retried: list[tuple[type, int]] = []
        self.sweeps: list[tuple[int, float]] = []

    def session_event(self, event: SessionEvent) -> None:
        with self.lock:
            self.events.append(event)

    def request_retried(self, error: BaseException, attempt: int) -> None:
        with self.lock:
            self.retried.append((type(error), attempt))

    def request_finished(self, outcome, attempts, commit_seconds) -> None:
        with self.lock:
            self.finished.append((outcome, attempts, commit_seconds))

    def janitor_ran(self, removed: int, seconds: float) -> None:
        with self.lock:
            self.sweeps.append((removed, seconds))

    def kinds(self) -> list[tuple[str, str]]:
        return [(event.kind, event.session_id) for event in self.events]


class Broken(Observer):
    """A subscriber whose every method raises."""

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self, *args: Any) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")

    session_event = request_retried = request_finished = janitor_ran = _fail


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def events_manager(clock: ManualClock, recorder: Recorder) -> SessionManager:
    manager = SessionManager(clock=clock)
    manager.observers.subscribe(recorder)
    return manager


def store(db: DB, manager: SessionManager, count: int = 1, user: str | None = None) -> list[str]:
    ids = []
    with db.transaction() as conn:
        for _ in range(count):
            session = manager.new(conn, user_id=user)
            session["x"] = 1
            ids.append(session.id)
    return ids


# -- session events ---------------------------------------------------------------


def test_created_is_reported_after_the_commit_not_before(database, events_manager, recorder, clock):
    tm = transaction.TransactionManager()
    conn = database.open(tm)
    try:
        session = events_manager.new(conn, user_id="alice")
        session["x"] = 1
        assert recorder.events == []  # stored, but not committed yet
        tm.commit()
    finally:
        conn.close()
    [event] = recorder.events
    assert (event.kind, event.session_id, event.user_id, event.at) == (
        "created", session.id, "alice", clock.now)
    assert session.id not in repr(event)  # ids are bearer secrets: events end up in logs


@pytest.mark.parametrize("how", ["abort", "forget_changes", "failed-vote"])
def test_nothing_is_reported_for_a_transaction_that_does_not_commit(database, events_manager,
                                                                    recorder, how):
    [kept] = store(database, events_manager)
    recorder.events.clear()
    tm = transaction.TransactionManager()
    conn = database.open(tm)
    try:
        session = events_manager.new(conn)
        session["x"] = 1
        events_manager.rotate(events_manager.get(conn, kept))
        if how == "abort":
            tm.abort()
        elif how == "forget_changes":
            events_manager.forget_changes(session)
            tm.commit()
        else:
            tm.get().join(VoteFails(ValueError("refused")))
            with pytest.raises(ValueError):
                tm.commit()
            tm.abort()
    finally:
        conn.close()
    assert recorder.events == []


def test_rotation_reports_the_previous_id(database, events_manager, recorder):
    [old] = store(database, events_manager)
    recorder.events.clear()
    with database.transaction() as conn:
        session = events_manager.get(conn, old)
        events_manager.rotate(session)
        new = session.id
    [event] = recorder.events
    assert (event.kind, event.session_id, event.previous_id) == ("rotated", new, old)


def test_login_on_a_new_session_is_one_created_event_under_the_final_id(database, events_manager,
                                                                       recorder):
    """Created, then rotated twice, in one transaction: the ids between were never visible."""
    with database.transaction() as conn:
        session = events_manager.new(conn)
        events_manager.set_user(session, "bob")
        first = session.id
        events_manager.rotate(session)
        events_manager.rotate(session)
        final = session.id
    assert final != first
    assert [(e.kind, e.session_id, e.user_id, e.previous_id) for e in recorder.events] == [
        ("created", final, "bob", None)]


def test_two_rotations_of_a_stored_session_are_one_event(database, events_manager, recorder):
    [old] = store(database, events_manager)
    recorder.events.clear()
    with database.transaction() as conn:
        session = events_manager.get(conn, old)
        events_manager.rotate(session)
        events_manager.rotate(session)
        final = session.id
    assert [(e.kind, e.session_id, e.previous_id) for e in recorder.events] == [
        ("rotated", final, old)]


def test_invalidate_revoke_and_revoke_user_are_reported(database, events_manager, recorder):
    first, second = store(database, events_manager, 2)
    alices = store(database, events_manager, 2, user="alice")
    recorder.events.clear()
    with database.transaction() as conn:
        events_manager.invalidate(events_manager.get(conn, first))
        assert events_manager.revoke(conn, second)
        assert events_manager.revoke_user(conn, "alice") == 2
    assert sorted(recorder.kinds()) == sorted(
        [("invalidated", first), ("revoked", second)] + [("revoked", sid) for sid in alices])


def test_maintenance_revokes_go_through_the_manager(database, events_manager, recorder):
    one, *rest = store(database, events_manager, 3)
    bobs = store(database, events_manager, 2, user="bob")
    recorder.events.clear()
    assert maintenance.revoke(database, events_manager, one)
    assert maintenance.revoke_user(database, events_manager, "bob") == 2
    assert maintenance.revoke_all(database, events_manager, batch_size=1) == 2
    assert sorted(recorder.kinds()) == sorted(("revoked", sid) for sid in [one, *bobs, *rest])


def test_each_expired_session_is_reported_once_per_committed_batch(database, events_manager,
                                                                   recorder, clock):
    old = store(database, events_manager, 5)
    clock.advance(events_manager.idle_timeout - 100)
    young = store(database, events_manager, 2)
    clock.advance(200)
    recorder.events.clear()
    with database.transaction() as conn:
        conn.transaction_manager.abort()  # expire commits its own batches
        assert events_manager.expire(conn, batch_size=2) == 5
    assert sorted(recorder.kinds()) == sorted(("expired", sid) for sid in old)
    assert not {sid for _, sid in recorder.kinds()} & set(young)


def test_expire_batch_retried_after_a_conflict_reports_its_victims_once(db, clock, recorder):
    """A request touches the victim while the sweep's batch runs: the batch
    conflicts (a removal never merges with a touch) and is retried; the
    events of the failed try are dropped with it."""
    touched = [True]  # disarmed while the session is stored

    def racing_clock() -> float:
        # Called for the event's time, inside the batch, after the removal.
        if not touched:
            touched.append(True)
            with db.transaction() as other:
                session = other.root()["zodbsession.sessions"].sessions[victim]
                session._p_changed = True  # a new revision, the same (old) time
        return clock.now

    manager = SessionManager(clock=racing_clock)
    manager.observers.subscribe(recorder)
    [victim] = store(db, manager)
    recorder.events.clear()
    touched.clear()
    tm = transaction.TransactionManager(explicit=True)
    conn = db.open(tm)
    try:
        assert manager.expire(conn, now=clock.now + manager.idle_timeout + 20) == 1
    finally:
        conn.close()
    assert touched == [True]
    assert recorder.kinds() == [("expired", victim)]


def test_a_raising_subscriber_never_breaks_a_commit(database, events_manager, recorder, caplog):
    broken = Broken()
    events_manager.observers.subscribe(broken)
    [sid] = store(database, events_manager)
    assert broken.calls == 1
    assert recorder.kinds() == [("created", sid)]
    assert "observer" in caplog.text and "observer bug" in caplog.text
    with database.transaction() as conn:
        assert events_manager.get(conn, sid)["x"] == 1


def test_no_subscriber_costs_no_hook(database):
    manager = SessionManager()
    tm = transaction.TransactionManager()
    conn = database.open(tm)
    try:
        session = manager.new(conn)
        session["x"] = 1
        assert list(tm.get().getAfterCommitHooks()) == []
        tm.commit()
    finally:
        conn.close()


# -- the publisher's outcomes --------------------------------------------------------


def outcome_app(environ, start_response):
    """Does what the path says; answers 200 unless the path is /5xx."""
    session = environ["zodbsession.session"]
    path = environ["PATH_INFO"]
    tm = environ["zodbsession.connection"].transaction_manager
    status = "200 OK"
    if path == "/write":
        session["n"] = session.get("n", 0) + 1
    elif path == "/read":
        session.get("n")
    elif path == "/raise":
        session["n"] = 99
        raise RuntimeError("application bug")
    elif path == "/5xx":
        session["n"] = 99
        status = "500 Internal Server Error"
    elif path == "/huge":
        session["blob"] = "x" * 100_000
    elif path == "/lambda":
        session["callback"] = lambda: None
    elif path == "/conflict":
        raise ConflictError("always")
    elif path == "/conflict-once":
        if environ["zodbsession.attempt"] == 1:
            raise ConflictError("once")
        session["n"] = 1
    elif path == "/unknown":
        session["n"] = 1
        tm.get().join(FinishFails(RuntimeError("gone")))
    elif path == "/disk-full":
        session["n"] = 1
        tm.get().join(VoteFails(OSError(28, "No space left on device")))
    start_response(status, [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def published(database, recorder) -> tuple[webtest.TestApp, Recorder]:
    manager = SessionManager(max_sessions=2)
    manager.observers.subscribe(recorder)
    pub = SessionPublisher(outcome_app, database, manager=manager, retry_attempts=3,
                           retry_backoff=0)
    return webtest.TestApp(pub), recorder


OUTCOMES = {
    "/write": ("committed", 1, 200),
    "/read": ("committed", 1, 200),
    "/raise": ("aborted_exception", 1, 500),
    "/5xx": ("aborted_veto", 1, 500),
    "/huge": ("aborted_invalid", 1, 500),
    "/lambda": ("aborted_invalid", 1, 500),
    "/conflict": ("gave_up", 3, 503),
    "/conflict-once": ("committed", 2, 200),
    "/unknown": ("outcome_unknown", 1, 503),
    "/disk-full": ("storage_error", 1, 503),
}


@pytest.mark.parametrize(("path", "expected"), OUTCOMES.items(), ids=OUTCOMES.keys())
def test_each_branch_of_the_decision_table_reports_its_outcome(published, path, expected):
    testapp, recorder = published
    outcome, attempts, status = expected
    response = testapp.get(path, expect_errors=True)
    assert response.status_int == status
    [(reported, tries, commit_seconds)] = recorder.finished
    assert (reported, tries) == (outcome, attempts)
    # A duration only where a commit ran and succeeded; a read commits nothing.
    assert (commit_seconds is not None) == (path in ("/write", "/conflict-once"))
    if commit_seconds is not None:
        assert 0 < commit_seconds < 10


def test_retries_are_reported_with_their_error_and_attempt(published):
    testapp, recorder = published
    testapp.get("/conflict", expect_errors=True)
    assert recorder.retried == [(ConflictError, 1), (ConflictError, 2)]


def test_session_limit_outcome(published, database):
    """At the cap with nothing to evict (its expiry index emptied by hand), a new one is refused."""
    testapp, recorder = published
    with database.transaction() as conn:
        for n in range(2):
            testapp.app.manager.new(conn, user_id=f"user-{n}")["n"] = n
        testapp.app.manager.container(conn).expiry.clear()
    testapp.reset()
    response = testapp.get("/write", expect_errors=True)
    assert response.status_int == 503
    assert recorder.finished[-1][0] == "session_limit"


def test_at_the_cap_an_anonymous_session_is_evicted_and_reported(published):
    testapp, recorder = published
    for _ in range(3):
        testapp.reset()
        assert testapp.get("/write").status_int == 200
    assert [e.kind for e in recorder.events] == ["created", "created", "evicted", "created"]


def test_publisher_events_and_outcomes_survive_a_raising_subscriber(published, caplog):
    testapp, recorder = published
    testapp.app.manager.observers.subscribe(Broken())
    response = testapp.get("/write")
    assert response.status_int == 200
    assert recorder.finished == [("committed", 1, recorder.finished[0][2])]
    assert [e.kind for e in recorder.events] == ["created"]
    assert testapp.get("/write").text == "ok"  # the session works on
    assert "observer bug" in caplog.text


def test_joined_publisher_reports_no_outcome(database, recorder):
    """The outer transaction manager, not the publisher, decides how the request ends."""
    manager = SessionManager()
    manager.observers.subscribe(recorder)
    pub = SessionPublisher(outcome_app, database, manager=manager, join_outer_transaction=True)
    transaction.manager.begin()
    try:
        webtest.TestApp(pub).get("/write")
        transaction.manager.commit()
    finally:
        transaction.manager.abort()
    assert recorder.finished == []
    assert [e.kind for e in recorder.events] == ["created"]


# -- the janitor ------------------------------------------------------------------


def test_janitor_reports_each_sweep_and_a_raising_subscriber_does_not_stop_it(database, clock,
                                                                            recorder, caplog):
    manager = SessionManager(clock=clock)
    manager.observers.subscribe(Broken())
    manager.observers.subscribe(recorder)
    store(database, manager, 3)
    clock.advance(manager.idle_timeout + 20)
    janitor = Janitor(database, manager, interval=0)
    assert janitor.sweep() == 3
    assert janitor.sweep() == 0
    assert [removed for removed, _seconds in recorder.sweeps] == [3, 0]
    assert all(seconds >= 0 for _removed, seconds in recorder.sweeps)
    assert [e.kind for e in recorder.events] == ["created"] * 3 + ["expired"] * 3
    assert "observer bug" in caplog.text


def test_janitor_thread_reports_to_the_hub(database, clock, recorder):
    manager = SessionManager(clock=clock)
    manager.observers.subscribe(recorder)
    janitor = Janitor(database, manager, interval=0.01).start()
    try:
        for _ in range(500):
            if recorder.sweeps:
                break
            time.sleep(0.01)
    finally:
        janitor.stop()
    assert recorder.sweeps and recorder.sweeps[0][0] == 0
