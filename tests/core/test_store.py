"""Tests for store.py: the container keeps its indexes consistent."""

from __future__ import annotations

import pytest

from zodbsession.core.session import Session, new_session_id
from zodbsession.core.store import (
    EXPIRY_SLOT_SECONDS,
    ROOT_KEY,
    SessionContainer,
    expiry_slot,
    get_container,
)


@pytest.fixture
def container(memory_conn) -> SessionContainer:
    container = get_container(memory_conn)
    memory_conn.transaction_manager.commit()
    return container


def _session(clock, user_id=None) -> Session:
    return Session(new_session_id(), clock(), user_id=user_id)


def test_get_container_without_create_writes_nothing(memory_db, memory_conn):
    before = memory_db.storage.lastTransaction()
    assert get_container(memory_conn, create=False) is None
    memory_conn.transaction_manager.commit()
    assert ROOT_KEY not in memory_conn.root()
    assert memory_db.storage.lastTransaction() == before


def test_get_container_creates_it_once(memory_conn):
    first = get_container(memory_conn)
    memory_conn.transaction_manager.commit()
    assert memory_conn.root()[ROOT_KEY] is first
    assert get_container(memory_conn) is first


@pytest.mark.parametrize(
    ("deadline", "slot"),
    [(0.0, 0), (0.1, 1), (10.0, 1), (10.000001, 2), (19.9, 2), (20.0, 2)],
    ids=["zero", "just-after-zero", "on-edge", "just-after-edge", "mid", "next-edge"],
)
def test_expiry_slot_rounds_deadline_up(deadline, slot):
    assert EXPIRY_SLOT_SECONDS == 10
    assert expiry_slot(deadline) == slot


def test_due_includes_a_slot_exactly_when_its_time_has_come(container):
    container.file_expiry("a", 20.0)  # slot 2, due at 20
    assert list(container.due(19.999)) == []
    assert list(container.due(20.0)) == [(2, "a")]


def test_due_is_oldest_first(container):
    for session_id, deadline in [("c", 300), ("a", 100), ("b", 200)]:
        container.file_expiry(session_id, deadline)
    assert [entry[1] for entry in container.due(1000)] == ["a", "b", "c"]


def test_add_stores_counts_and_indexes(container, clock):
    session = _session(clock, user_id="alice")
    container.add(session, clock() + 100)
    assert container.get(session.id) is session
    assert len(container) == 1
    assert container.user_session_ids("alice") == [session.id]
    assert list(container.expiry) == [(expiry_slot(clock() + 100), session.id)]


def test_remove_drops_session_and_user_entry_but_keeps_expiry_entry(container, clock):
    session = _session(clock, user_id="alice")
    container.add(session, clock() + 100)
    container.remove(session)
    assert container.get(session.id) is None
    assert len(container) == 0
    assert container.user_session_ids("alice") == []
    assert "alice" not in container.by_user
    assert len(container.expiry) == 1


def test_rename_moves_session_and_reindexes(container, clock):
    session = _session(clock, user_id="alice")
    old_id = session.id
    container.add(session, clock() + 100)
    new_id = new_session_id()
    container.rename(session, new_id, clock() + 200)
    assert session.id == new_id
    assert container.get(old_id) is None
    assert container.get(new_id) is session
    assert container.user_session_ids("alice") == [new_id]
    assert (expiry_slot(clock() + 200), new_id) in container.expiry
    assert len(container) == 1


def test_set_user_moves_session_between_users(container, clock):
    session = _session(clock, user_id="alice")
    container.add(session, clock() + 100)
    container.set_user(session, "bob")
    assert session.user_id == "bob"
    assert container.user_session_ids("alice") == []
    assert container.user_session_ids("bob") == [session.id]
    container.set_user(session, None)
    assert session.user_id is None
    assert list(container.by_user) == []


def test_user_index_keeps_every_session_of_a_user(container, clock):
    sessions = [_session(clock, user_id="alice") for _ in range(3)]
    for session in sessions:
        container.add(session, clock() + 100)
    container.remove(sessions[1])
    assert sorted(container.user_session_ids("alice")) == sorted(
        [sessions[0].id, sessions[2].id]
    )


def test_container_survives_a_round_trip_through_storage(db, connect, clock):
    writer = connect(db)
    session = _session(clock, user_id="alice")
    session["a"] = 1
    get_container(writer).add(session, clock() + 100)
    writer.transaction_manager.commit()

    reader = connect(db)
    container = get_container(reader, create=False)
    assert container is not None
    assert container.get(session.id)["a"] == 1
    assert len(container) == 1
    assert container.user_session_ids("alice") == [session.id]
