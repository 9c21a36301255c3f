"""Random operation sequences against a plain-Python model of the sessions.

The model is a dict ``{session_id -> Record(created, last_access, user)}`` of
the sessions that are *stored* (live or expired but not yet swept), plus the
clock. After every step, committed on a MappingStorage database, the
container's sessions, count, user index and expiry index, and what ``get()``
finds live, must agree with the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

import transaction
from hypothesis import example, given, settings
from hypothesis import strategies as st
from ZODB import DB
from ZODB.MappingStorage import MappingStorage

from zodbsession.core.manager import SessionManager
from zodbsession.core.store import EXPIRY_SLOT_SECONDS, expiry_slot, get_container
from zodbsession.testing import ManualClock

IDLE = 1800.0
LIFETIME = 7200.0
RESOLUTION = 60.0
USERS = ["alice", "bob", "carol"]


@dataclass
class Record:
    created: float
    last_access: float
    user: str | None = None
    own_idle: float | None = None  # set_expiry(seconds)
    at: float | None = None  # set_expiry(a moment)

    def deadline(self) -> float:
        if self.at is not None:
            return self.at
        if self.own_idle is not None:
            return min(self.last_access + self.own_idle, self.created + max(LIFETIME, self.own_idle))
        return min(self.last_access + IDLE, self.created + LIFETIME)


users = st.sampled_from([None, *USERS])
picks = st.integers(min_value=0, max_value=10_000)
advances = st.sampled_from([1.0, 59.5, 60.0, 61.0, 300.0, 600.0, 1000.0, 1799.0, 1800.0, 3600.0])
operations = st.one_of(
    st.tuples(st.just("new"), users),
    st.tuples(st.just("new_unwritten"), users),
    st.tuples(st.just("touch"), picks),
    st.tuples(st.just("touch_all")),
    st.tuples(st.just("rotate"), picks),
    st.tuples(st.just("set_user"), picks, users),
    st.tuples(st.just("revoke"), picks),
    st.tuples(st.just("revoke_user"), st.sampled_from(USERS)),
    st.tuples(st.just("advance"), advances),
    st.tuples(st.just("expire"), st.integers(min_value=1, max_value=4)),
    # Per-session expiry, shortened and lengthened: ("idle", s), ("in", s) a moment, ("none",).
    st.tuples(st.just("set_expiry"), picks, st.sampled_from(
        [("idle", 30.0), ("idle", 600.0), ("idle", 20_000.0), ("in", 15.0), ("in", 900.0),
         ("in", 50_000.0), ("none", 0.0), ("browser", 0.0)])),
)
# A busy site: each tick moves the clock a little, uses some of the sessions,
# maybe opens one and maybe sweeps. It reaches the sweep's re-filing often.
ticks = st.tuples(
    st.floats(min_value=0, max_value=900),
    st.integers(min_value=0, max_value=2**16 - 1),  # which sessions are used
    st.booleans(),  # a new session
    st.booleans(),  # a sweep
)


class Run:
    """One sequence: the real database and the model, stepped together."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.manager = SessionManager(
            idle_timeout=IDLE,
            max_lifetime=LIFETIME,
            access_resolution=RESOLUTION,
            clock=self.clock,
        )
        self.db = DB(MappingStorage())
        self.conn = self.db.open(transaction.TransactionManager())
        self.model: dict[str, Record] = {}  # {session_id -> Record}
        self.known: list[str] = []  # every id ever issued, dead ones included

    def close(self) -> None:
        self.conn.transaction_manager.abort()
        self.conn.close()
        self.db.close()

    # -- model helpers ---------------------------------------------------------

    def live(self, session_id: str) -> bool:
        record = self.model.get(session_id)
        return record is not None and self.clock.now < record.deadline()

    def model_touch(self, session_id: str) -> None:
        record = self.model[session_id]
        if self.clock.now - record.last_access >= RESOLUTION:
            record.last_access = self.clock.now

    def pick(self, index: int) -> str | None:
        """A stored session's id, or any id ever issued when none is stored."""
        ids = sorted(self.model) or self.known
        return ids[index % len(ids)] if ids else None

    def pick_any(self, index: int) -> str | None:
        return self.known[index % len(self.known)] if self.known else None

    def model_get(self, session_id: str):
        """``manager.get`` and the model's view of it, which must agree."""
        session = self.manager.get(self.conn, session_id)
        assert (session is not None) == self.live(session_id), session_id
        if session is not None:
            self.model_touch(session_id)
        return session

    # -- steps ------------------------------------------------------------------

    def step(self, op: tuple) -> None:
        getattr(self, "op_" + op[0])(*op[1:])
        self.conn.transaction_manager.commit()
        self.check()

    def op_new(self, user: str | None) -> None:
        session = self.manager.new(self.conn, user_id=user)
        session["n"] = len(self.known)
        self.known.append(session.id)
        self.model[session.id] = Record(self.clock.now, self.clock.now, user)

    def op_new_unwritten(self, user: str | None) -> None:
        session = self.manager.new(self.conn, user_id=user)
        self.known.append(session.id)

    def op_touch(self, index: int) -> None:
        session_id = self.pick(index)
        if session_id is not None:
            self.model_get(session_id)

    def op_touch_all(self) -> None:
        for session_id in sorted(self.model):
            self.model_get(session_id)

    def op_touch_some(self, mask: int) -> None:
        for bit, session_id in enumerate(sorted(self.model)[:16]):
            if mask >> bit & 1:
                self.model_get(session_id)

    def op_rotate(self, index: int) -> None:
        session_id = self.pick(index)
        if session_id is None:
            return
        session = self.model_get(session_id)
        if session is None:
            return
        self.manager.rotate(session)
        assert session.id != session_id
        self.known.append(session.id)
        self.model[session.id] = self.model.pop(session_id)

    def op_set_user(self, index: int, user: str | None) -> None:
        session_id = self.pick(index)
        if session_id is None:
            return
        session = self.model_get(session_id)
        if session is not None:
            self.manager.set_user(session, user)
            self.model[session_id].user = user

    def op_set_expiry(self, index: int, choice: tuple[str, float]) -> None:
        session_id = self.pick(index)
        if session_id is None:
            return
        session = self.model_get(session_id)
        if session is None:
            return
        kind, seconds = choice
        value = {"idle": seconds, "in": timedelta(seconds=seconds), "none": None, "browser": 0}[kind]
        record = self.model[session_id]
        new = (seconds if kind == "idle" else None, self.clock.now + seconds if kind == "in" else None)
        if self.manager.set_expiry(session, value):
            record.last_access = self.clock.now  # a change records the access
        record.own_idle, record.at = new

    def op_revoke(self, index: int) -> None:
        session_id = self.pick_any(index)
        if session_id is not None:
            assert self.manager.revoke(self.conn, session_id) == (session_id in self.model)
            self.model.pop(session_id, None)

    def op_revoke_user(self, user: str) -> None:
        owned = [i for i, record in self.model.items() if record.user == user]
        assert self.manager.revoke_user(self.conn, user) == len(owned)
        for session_id in owned:
            del self.model[session_id]

    def op_advance(self, seconds: float) -> None:
        self.clock.now += seconds

    def op_expire(self, batch_size: int) -> None:
        now = self.clock.now
        before = dict(self.model)
        removed = self.manager.expire(self.conn, batch_size=batch_size)
        container = get_container(self.conn, create=False)
        remaining = set(container.sessions.keys()) if container is not None else set()
        gone = set(before) - remaining
        assert remaining <= set(before)
        assert removed == len(gone)
        for session_id, record in before.items():
            if now < record.deadline():
                assert session_id in remaining, "a live session was expired"
            elif record.deadline() <= now - EXPIRY_SLOT_SECONDS:
                assert session_id not in remaining, "an expired session survived the sweep"
            # Expired within the last slot: the sweep may find it now or next time.
        for session_id in gone:
            del self.model[session_id]

    # -- the invariants -----------------------------------------------------------

    def check(self) -> None:
        container = get_container(self.conn, create=False)
        if container is None:
            assert self.model == {}
            return
        assert set(container.sessions.keys()) == set(self.model)
        assert len(container) == len(self.model)

        by_user: dict[str, set[str]] = {}
        for session_id, record in self.model.items():
            if record.user is not None:
                by_user.setdefault(record.user, set()).add(session_id)
        assert {user: set(ids) for user, ids in container.by_user.items()} == by_user

        entries: dict[str, list[int]] = {}
        for slot, session_id in container.expiry:
            entries.setdefault(session_id, []).append(slot)
        for session_id, record in self.model.items():
            session = container.get(session_id)
            assert session.id == session_id
            assert session.created == record.created
            assert session.last_access == record.last_access
            assert session.user_id == record.user
            # Filed no later than its deadline, so the sweep cannot miss it.
            assert min(entries[session_id]) <= expiry_slot(record.deadline())
            assert min(entries[session_id]) >= math.ceil(record.created / EXPIRY_SLOT_SECONDS)

        for session_id in self.known:
            found = self.manager.get(self.conn, session_id)
            assert (found is not None) == self.live(session_id), session_id
        self.conn.transaction_manager.abort()  # forget the touches of that check


@settings(max_examples=50, deadline=None)
@given(st.lists(operations, min_size=10, max_size=50))
# Sequences the random search reaches only rarely, pinned so every run has them.
@example(  # an entry comes due for a session touched since: it must be re-filed
    [("new", None), ("advance", 1000.0), ("touch", 0), ("advance", 1000.0), ("expire", 2)]
)
@example(  # the entries left behind by a rotation and a revoke are dropped
    [("new", "alice"), ("new", None), ("advance", 600.0), ("rotate", 0), ("revoke", 1),
     ("advance", 1800.0), ("expire", 1), ("advance", 1800.0), ("expire", 1)]
)
@example(  # the absolute lifetime ends a session touched all along
    [("new", "bob"), *[("advance", 1000.0), ("touch", 0)] * 8, ("expire", 3)]
)
@example(  # a deadline shortened after filing is swept on time, not at the old entry
    [("new", None), ("advance", 60.0), ("set_expiry", 0, ("idle", 30.0)), ("advance", 61.0),
     ("expire", 1)]
)
@example(  # shortened to a moment, then lengthened again: the early entry is re-filed
    [("new", "bob"), ("set_expiry", 0, ("in", 15.0)), ("set_expiry", 0, ("idle", 20_000.0)),
     ("advance", 60.0), ("expire", 1), ("advance", 3600.0), ("expire", 2)]
)
@example(  # logout of a user whose sessions are partly expired but not swept
    [("new", "carol"), ("advance", 1799.0), ("new", "carol"), ("advance", 1.0),
     ("revoke_user", "carol"), ("expire", 1)]
)
def test_random_operations_keep_container_and_indexes_equal_to_model(ops):
    run = Run()
    try:
        for op in ops:
            run.step(op)
    finally:
        run.close()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([None, *USERS]), st.floats(0, 4000)), max_size=25),
    st.floats(0, 10_000),
)
def test_expire_removes_every_expired_session_and_no_live_one(creations, later):
    """Sessions created over time, then one sweep at a later moment."""
    run = Run()
    try:
        for user, gap in creations:
            run.op_advance(gap)
            run.step(("new", user))
        run.op_advance(later)
        run.step(("expire", 3))
    finally:
        run.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(ticks, min_size=5, max_size=40))
def test_busy_site_keeps_container_and_indexes_equal_to_model(schedule):
    run = Run()
    try:
        for seconds, used, opens, sweeps in schedule:
            run.op_advance(seconds)
            run.step(("touch_some", used))
            if opens:
                run.step(("new", USERS[used % len(USERS)] if used % 4 else None))
            if sweeps:
                run.step(("expire", 1 + used % 4))
    finally:
        run.close()
