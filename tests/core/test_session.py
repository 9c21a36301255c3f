"""Tests for session.py: ids, the mapping behaviour and change tracking."""

from __future__ import annotations

import base64

import pytest

from zodbsession.core.session import (
    SESSION_ID_BYTES,
    Session,
    ids_equal,
    is_well_formed_id,
    new_session_id,
)

# -- ids -----------------------------------------------------------------


def test_new_session_id_carries_256_bits():
    session_id = new_session_id()
    raw = base64.urlsafe_b64decode(session_id + "=")
    assert SESSION_ID_BYTES == 32
    assert len(raw) == 32


def test_new_session_id_is_url_safe():
    for _ in range(200):
        session_id = new_session_id()
        assert set(session_id) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_new_session_ids_are_unique_over_many():
    ids = {new_session_id() for _ in range(20_000)}
    assert len(ids) == 20_000


def test_new_session_ids_never_start_with_a_dash():
    """A leading '-' would read as an option in ``zodbsession revoke ID`` (1 in 64 otherwise)."""
    assert not any(new_session_id().startswith("-") for _ in range(5_000))


def test_new_session_ids_are_well_formed():
    assert all(is_well_formed_id(new_session_id()) for _ in range(200))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 42,
        "a" * 44,
        "a" * 42 + "=",
        "a" * 42 + "+",
        "a" * 42 + "/",
        "a" * 42 + ".",
        "a" * 42 + "\n",
        "a" * 43 + "\n",
        "\n" + "a" * 43,
        " " + "a" * 42,
        "a" * 42 + "é",
        "../../../../etc/passwd" + "a" * 21,
        None,
        42,
        b"a" * 43,
        ["a" * 43],
    ],
    ids=[
        "empty",
        "too-short",
        "too-long",
        "padding",
        "plus",
        "slash",
        "dot",
        "inner-newline",
        "trailing-newline",
        "leading-newline",
        "leading-space",
        "non-ascii",
        "path",
        "none",
        "int",
        "bytes",
        "list",
    ],
)
def test_malformed_ids_are_rejected(value):
    assert not is_well_formed_id(value)


def test_well_formed_id_check_accepts_every_url_safe_character():
    assert is_well_formed_id("A-_z09" + "x" * 37)


def test_ids_equal_compares_values():
    a = new_session_id()
    assert ids_equal(a, "".join(a))  # equal value, distinct object
    assert not ids_equal(a, new_session_id())
    assert not ids_equal(a, a[:-1])


def test_ids_equal_tells_non_ascii_input_apart():
    assert not ids_equal("é" * 43, "a" * 43)
    assert not ids_equal("é" * 43, "?" * 43)
    assert ids_equal("é" * 43, "é" * 43)


# -- the mapping ----------------------------------------------------------


@pytest.fixture
def session(clock, memory_conn) -> Session:
    """A committed session, so that ZODB tracks its changes."""
    session = Session(new_session_id(), clock())
    memory_conn.root()["session"] = session
    memory_conn.transaction_manager.commit()
    return session


def test_session_behaves_as_a_mapping(session):
    session["a"] = 1
    session["b"] = [2]
    assert session["a"] == 1
    assert "a" in session
    assert "z" not in session
    assert len(session) == 2
    assert sorted(session) == ["a", "b"]
    assert session.get("z", "default") == "default"
    del session["a"]
    assert "a" not in session
    with pytest.raises(KeyError):
        session["a"]
    with pytest.raises(KeyError):
        del session["a"]


def test_data_returns_a_copy(session):
    session["a"] = 1
    copy = session.data()
    copy["b"] = 2
    assert copy == {"a": 1, "b": 2}
    assert "b" not in session


def test_assigning_marks_session_changed(session):
    assert not session._p_changed
    session["a"] = 1
    assert session._p_changed


def test_deleting_marks_session_changed(session):
    session["a"] = 1
    session._p_jar.transaction_manager.commit()
    del session["a"]
    assert session._p_changed


def test_clear_of_empty_session_is_not_a_change(session):
    session.clear()
    assert not session._p_changed


def test_clear_marks_session_changed_once(session):
    session.update(a=1, b=2)
    session._p_jar.transaction_manager.commit()
    session.clear()
    assert session._p_changed
    assert len(session) == 0


def test_nested_in_place_mutation_does_not_mark_changed(session):
    session["cart"] = []
    session._p_jar.transaction_manager.commit()
    session["cart"].append("apple")
    assert not session._p_changed
    session.changed()
    assert session._p_changed


def test_reading_does_not_mark_changed(session):
    session["a"] = 1
    session._p_jar.transaction_manager.commit()
    _ = session["a"], session.get("b"), list(session), len(session), "a" in session
    assert not session._p_changed


def test_repr_shows_neither_data_nor_whole_id(session):
    session["password"] = "hunter2"
    text = repr(session)
    assert "hunter2" not in text
    assert session.id not in text
    assert session.id[:8] in text


# -- bookkeeping ----------------------------------------------------------


def test_new_session_last_access_is_its_creation(session, clock):
    assert session.last_access == clock()
    assert session.created == clock()


def test_touch_within_resolution_records_nothing(session, clock):
    assert not session.touch(clock() + 59.9, 60)
    assert session.last_access == clock()


def test_touch_at_resolution_records_access(session, clock):
    assert session.touch(clock() + 60, 60)
    assert session.last_access == clock() + 60


def test_a_touch_alone_is_not_a_rewrite_of_the_session(session, clock):
    session._p_changed = False  # as if loaded
    assert session.touch(clock() + 100, 60)
    assert session._p_changed  # the access time is in the record: it is stored
    assert not session.rewritten  # but nothing else changed
    session.touch(clock() + 200, 60)
    assert not session.rewritten


def test_any_other_write_after_a_touch_is_a_rewrite(session, clock):
    for write in (lambda: session.__setitem__("a", 1), lambda: setattr(session, "user_id", "u"),
                  session.changed, lambda: setattr(session, "_p_changed", True)):
        session._p_changed = False
        session.touch(session.last_access + 100, 60)
        write()
        assert session.rewritten


def test_a_touch_never_moves_the_access_time_back(session, clock):
    assert not session.touch(clock() - 10, 0)
    assert not session.touch(clock(), 0)
    assert session.last_access == clock()


def test_a_new_session_keeps_its_access_time_in_its_own_record(session, clock):
    state = session.__getstate__()
    assert "_last_access" not in state and "_accessed" not in state  # not touched: its creation
    assert "user_id" not in state  # None, the class default
    session.touch(clock() + 60, 60)
    assert session.__getstate__()["_accessed"] == clock() + 60 == session.last_access


def test_deadline_is_the_earlier_of_both_timeouts(session, clock):
    start = clock()
    assert session.deadline(idle_timeout=100, max_lifetime=1000) == start + 100
    session.touch(start + 950, 0)
    assert session.deadline(idle_timeout=100, max_lifetime=1000) == start + 1000


def test_session_is_stored_once_in_a_connection(session, clock):
    assert session.is_stored
    assert not Session(new_session_id(), clock()).is_stored


def test_sessions_with_equal_data_are_distinct_and_hashable():
    first = Session(new_session_id(), 0.0)
    second = Session(new_session_id(), 0.0)
    assert first != second
    assert len({first, second}) == 2


def test_own_idle_timeout_replaces_the_managers_and_lifts_the_lifetime(session, clock):
    start = clock()
    session._expiry = ("idle", 5000.0)
    assert session.deadline(idle_timeout=100, max_lifetime=1000) == start + 5000
    session.touch(start + 10, 0)
    assert session.deadline(idle_timeout=100, max_lifetime=1000) == start + 5000  # lifetime cap
    session._expiry = ("idle", 50.0)
    assert session.deadline(idle_timeout=100, max_lifetime=1000) == start + 60


def test_absolute_expiry_replaces_both_timeouts(session, clock):
    session._expiry = ("at", clock() + 12345.0)
    assert session.deadline(idle_timeout=100, max_lifetime=1000) == clock() + 12345


def test_browser_close_expiry_keeps_the_managers_timeouts(session, clock):
    session._expiry = ("browser", 0.0)
    assert session.deadline(idle_timeout=100, max_lifetime=1000) == clock() + 100


def test_old_pickles_without_an_expiry_load_with_none(memory_db, memory_conn, clock, connect):
    """A session stored before sessions had an expiry of their own reads as the manager's."""
    session = Session(new_session_id(), clock())
    session.__dict__.pop("user_id", None)  # as pickled by a version without later attributes
    memory_conn.root()["old"] = session
    memory_conn.transaction_manager.commit()
    loaded = connect(memory_db).root()["old"]
    assert loaded._expiry is None and loaded.user_id is None


# -- flash queues ------------------------------------------------------------


def test_flash_queues_messages_oldest_first_and_pop_empties_the_queue(session):
    session.flash("saved")
    session.flash("again")
    assert session.peek_flash() == ["saved", "again"]
    assert session.peek_flash() == ["saved", "again"]  # peeking leaves them
    assert session.pop_flash() == ["saved", "again"]
    assert session.pop_flash() == []
    assert session.peek_flash() == []


def test_flash_queues_are_separate(session):
    session.flash("ok")
    session.flash("bad", "error")
    assert session.pop_flash("error") == ["bad"]
    assert session.pop_flash() == ["ok"]


def test_flash_without_duplicates_keeps_one_of_equal_messages(session):
    session.flash("hi", allow_duplicate=False)
    session.flash("hi", allow_duplicate=False)
    session.flash("hi")
    assert session.pop_flash() == ["hi", "hi"]


def test_flash_is_a_write_and_peek_is_not(session):
    session.peek_flash()
    session.pop_flash()
    assert not session._p_changed
    session.flash("x")
    assert session._p_changed
    session._p_jar.transaction_manager.commit()
    session.peek_flash()
    assert not session._p_changed
    session.pop_flash()
    assert session._p_changed


def test_flash_survives_a_commit_and_a_fresh_connection(session, memory_db, connect):
    session.flash("welcome", "info")
    session._p_jar.transaction_manager.commit()
    assert connect(memory_db).root()["session"].pop_flash("info") == ["welcome"]


def test_pop_flash_returns_a_list_the_caller_may_change(session):
    session.flash("a")
    peeked = session.peek_flash()
    peeked.append("b")
    assert session.peek_flash() == ["a"]


# -- the CSRF token ------------------------------------------------------------


def test_get_csrf_token_makes_one_once_and_keeps_it(session):
    token = session.get_csrf_token()
    assert len(token) >= 40
    assert session.get_csrf_token() == token
    assert session.check_csrf_token(token)


def test_new_csrf_token_replaces_the_old_one(session):
    old = session.get_csrf_token()
    new = session.new_csrf_token()
    assert new != old
    assert session.check_csrf_token(new)
    assert not session.check_csrf_token(old)


@pytest.mark.parametrize("token", ["", "x", None, 42, b"token", "é" * 43],
                         ids=["empty", "short", "none", "int", "bytes", "non-ascii"])
def test_check_csrf_token_refuses_anything_else(session, token):
    session.get_csrf_token()
    assert not session.check_csrf_token(token)


def test_check_csrf_token_without_a_token_is_false_and_writes_nothing(session):
    assert not session.check_csrf_token("anything")
    assert not session._p_changed
    assert "_csrft_" not in session


def test_csrf_tokens_of_two_sessions_differ(clock):
    first, second = Session(new_session_id(), clock()), Session(new_session_id(), clock())
    assert first.get_csrf_token() != second.get_csrf_token()
    assert not first.check_csrf_token(second.get_csrf_token())
