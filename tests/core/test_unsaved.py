"""Tests for unsaved.py and ``RequestSession.settle``: a found session's data
changed in place without ``save_changes()`` is saved, or reported, never lost.

Within one process the loss is masked by ZODB's object cache, so the tests
that show a change survived read it back through a *new* ``DB`` on the same
FileStorage file: a fresh cache, as after a restart. The test across a real
server restart is in ``tests/serve/test_unsaved_restart.py``.
"""

from __future__ import annotations

import json
import logging
from copy import deepcopy

import pytest
import transaction
from hypothesis import given, settings
from hypothesis import strategies as st
from persistent.list import PersistentList
from ZODB import DB
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage

from zodbsession.core.errors import ConfigError, UnsavedSessionChanges, UnstorableSessionValue
from zodbsession.core.manager import SessionManager
from zodbsession.core.request_session import RequestSession
from zodbsession.core.unsaved import changed_keys, fingerprint, holds_only_immutables
from zodbsession.testing import make_client


@pytest.fixture
def file_db(tmp_path):
    """A FileStorage database, and a function that reopens it with a fresh cache."""
    path = str(tmp_path / "Data.fs")
    opened = [DB(FileStorage(path))]

    def reopen() -> DB:
        opened[-1].close()
        opened.append(DB(FileStorage(path)))
        return opened[-1]

    yield opened[0], reopen
    opened[-1].close()


def _stored_id(manager, database, **data) -> str:
    conn = database.open(transaction.TransactionManager())
    session = manager.new(conn)
    session.update(data)
    conn.transaction_manager.commit()
    conn.close()
    return session.id


def _request(manager, database, session_id, work, *, settle=True):
    """One request's session work on its own connection, committed; returns what settle said."""
    tm = transaction.TransactionManager()
    conn = database.open(tm)
    try:
        view = RequestSession(manager, conn, session_id)
        work(view)
        keys = view.settle() if settle else None
        tm.commit()
        return keys
    finally:
        conn.close()


def _read_after_restart(manager, reopen, session_id, key):
    database = reopen()
    conn = database.open(transaction.TransactionManager())
    try:
        return manager.get(conn, session_id)[key]
    finally:
        conn.close()


def test_in_place_change_is_saved_by_settle_and_survives_a_fresh_cache(manager, file_db):
    database, reopen = file_db
    session_id = _stored_id(manager, database, cart=["apple"])
    keys = _request(manager, database, session_id, lambda s: s["cart"].append("pear"))
    assert keys == ["cart"]
    assert _read_after_restart(manager, reopen, session_id, "cart") == ["apple", "pear"]


def test_without_settle_the_in_place_change_is_lost_after_a_fresh_cache(manager, file_db):
    """The trap itself, so that the test above can fail: the cache masks it, a restart shows it."""
    database, reopen = file_db
    session_id = _stored_id(manager, database, cart=["apple"])
    _request(manager, database, session_id, lambda s: s["cart"].append("pear"), settle=False)
    conn = database.open(transaction.TransactionManager())
    assert manager.get(conn, session_id)["cart"] == ["apple", "pear"]  # masked in-process
    conn.close()
    assert _read_after_restart(manager, reopen, session_id, "cart") == ["apple"]


@pytest.mark.parametrize("change", [
    lambda s: s["prefs"].update(theme="light"),
    lambda s: s["prefs"]["tags"].add("new"),
    lambda s: s["cart"].pop(),
    lambda s: s["cart"][0].append("nested"),
], ids=["dict-update", "set-in-dict", "list-pop", "list-in-list"])
def test_every_kind_of_nested_change_is_found(manager, memory_db, change):
    session_id = _stored_id(manager, memory_db, cart=[["x"], "y"], prefs={"theme": "dark", "tags": {"a"}})
    keys = _request(manager, memory_db, session_id, change)
    assert keys in (["cart"], ["prefs"])


def test_a_read_only_request_writes_nothing(manager, memory_db):
    session_id = _stored_id(manager, memory_db, cart=["apple"], n=1)
    before = memory_db.storage.lastTransaction()
    assert _request(manager, memory_db, session_id, lambda s: (s["cart"], s.get("n"), list(s))) == []
    assert memory_db.storage.lastTransaction() == before


def test_a_change_already_marked_is_left_to_the_commit(manager, memory_db):
    session_id = _stored_id(manager, memory_db, cart=["apple"])

    def work(view):
        view["cart"].append("pear")
        view.save_changes()

    assert _request(manager, memory_db, session_id, work) == []


def test_only_the_keys_changed_in_place_are_named(manager, memory_db):
    session_id = _stored_id(manager, memory_db, a=[1], b=[2], c={"x": 1})

    def work(view):
        view["a"].append(1)
        view["c"]["y"] = 2

    assert _request(manager, memory_db, session_id, work) == ["a", "c"]


class _Counter(int):
    """An int subclass: its instances carry a ``__dict__`` that can change in place."""


@pytest.mark.parametrize(("data", "immutable"), [
    ({}, True),
    ({"n": 1, "f": 1.5, "c": 1j, "s": "x", "b": b"x", "t": True, "none": None}, True),
    ({"pair": (1, ("a", b"b")), "set": frozenset({1, "a", (2, 3)})}, True),
    ({"n": 1, "cart": []}, False),
    ({"pair": (1, [2])}, False),
    ({"set": frozenset({(1, frozenset({_Counter(2)}))})}, False),
    ({"n": _Counter(1)}, False),
    ({"d": {}}, False),
    ({"p": PersistentList()}, False),
])
def test_only_values_immutable_all_the_way_down_skip_the_fingerprint(data, immutable):
    assert holds_only_immutables(data) is immutable


def test_a_session_of_immutable_values_is_not_fingerprinted_and_its_changes_still_commit(
        manager, file_db):
    database, reopen = file_db
    session_id = _stored_id(manager, database, n=1, name="ann", pair=(1, 2))

    def work(view):
        assert view["n"] == 1
        assert view._loaded is None  # no fingerprint: nothing can change in place
        view["n"] = 2  # a change is an assignment, which marks the record

    assert _request(manager, database, session_id, work) == []
    assert _read_after_restart(manager, reopen, session_id, "n") == 2


def test_a_session_holding_a_mutable_value_is_fingerprinted(manager, memory_db):
    session_id = _stored_id(manager, memory_db, n=1, cart=["apple"])

    def work(view):
        assert view["n"] == 1
        assert view._loaded is not None
        view["cart"].append("pear")

    assert _request(manager, memory_db, session_id, work) == ["cart"]


def test_a_new_session_is_never_fingerprinted(manager, memory_db):
    assert _request(manager, memory_db, None, lambda s: s.get("cart")) == []


def test_persistent_subobjects_are_references_saved_by_zodb_itself(manager, memory_db):
    """A PersistentList in the data is a record of its own: the session's record is not rewritten."""
    conn = memory_db.open(transaction.TransactionManager())
    session = manager.new(conn)
    session["cart"] = PersistentList(["apple"])
    conn.transaction_manager.commit()
    session_id = session.id
    conn.close()
    memory_db.cacheMinimize()  # the list is a ghost in every cache

    def work(view):
        cart = view._zodbsession_unwrap()._data["cart"]
        assert cart._p_status == "ghost"  # loading the view's fingerprint did not load it
        cart.append("pear")

    assert _request(manager, memory_db, session_id, work) == []
    conn = memory_db.open(transaction.TransactionManager())
    assert list(manager.get(conn, session_id)["cart"]) == ["apple", "pear"]
    conn.close()


def test_warn_saves_and_logs_a_warning_naming_the_keys(clock, file_db, caplog):
    manager = SessionManager(clock=clock, unsaved_changes="warn")
    database, reopen = file_db
    session_id = _stored_id(manager, database, cart=["apple"], secret="hunter2")
    with caplog.at_level(logging.WARNING, logger="zodbsession.core.unsaved"):
        _request(manager, database, session_id, lambda s: s["cart"].append("pear"))
    (record,) = [r for r in caplog.records if r.name == "zodbsession.core.unsaved"]
    assert record.levelno == logging.WARNING
    assert "'cart'" in record.getMessage() and "save_changes" in record.getMessage()
    assert "hunter2" not in record.getMessage() and session_id not in record.getMessage()
    assert _read_after_restart(manager, reopen, session_id, "cart") == ["apple", "pear"]


def test_save_logs_no_warning(manager, memory_db, caplog):
    session_id = _stored_id(manager, memory_db, cart=["apple"])
    with caplog.at_level(logging.DEBUG, logger="zodbsession.core.unsaved"):
        _request(manager, memory_db, session_id, lambda s: s["cart"].append("pear"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_error_raises_naming_the_keys_and_the_fix(clock, memory_db):
    manager = SessionManager(clock=clock, unsaved_changes="error")
    session_id = _stored_id(manager, memory_db, cart=["apple"])
    with pytest.raises(UnsavedSessionChanges) as info:
        _request(manager, memory_db, session_id, lambda s: s["cart"].append("pear"))
    assert info.value.keys == ["cart"]
    assert "save_changes()" in str(info.value)


def test_a_touch_in_the_same_request_hides_no_in_place_change(clock, memory_db, caplog):
    """The touch rewrites the session's record, but settle still sees the in-place change."""
    manager = SessionManager(clock=clock, unsaved_changes="error", access_resolution=60)
    session_id = _stored_id(manager, memory_db, cart=["apple"])
    clock.advance(61)

    def work(view):
        view["cart"].append("pear")
        assert view._session._p_changed and not view._session.rewritten  # touched only

    tm = transaction.TransactionManager()
    conn = memory_db.open(tm)
    try:
        view = RequestSession(manager, conn, session_id)
        work(view)
        with pytest.raises(UnsavedSessionChanges):
            view.settle()
    finally:
        tm.abort()
        conn.close()
    warning = SessionManager(clock=clock, unsaved_changes="warn", access_resolution=60)
    with caplog.at_level(logging.WARNING, logger="zodbsession.core.unsaved"):
        assert _request(warning, memory_db, session_id, work) == ["cart"]
    assert [r for r in caplog.records if r.name == "zodbsession.core.unsaved"]


def test_a_touch_alone_is_no_written_session(clock, memory_db):
    manager = SessionManager(clock=clock, access_resolution=60)
    session_id = _stored_id(manager, memory_db, cart=["apple"])
    clock.advance(61)
    written = []
    _request(manager, memory_db, session_id, lambda view: written.append((
        view["cart"], view._session._p_changed, view.written_session())))
    assert written == [(["apple"], True, None)]


def test_error_lets_a_marked_change_through(clock, memory_db):
    manager = SessionManager(clock=clock, unsaved_changes="error")
    session_id = _stored_id(manager, memory_db, cart=["apple"])

    def work(view):
        view["cart"] = [*view["cart"], "pear"]

    assert _request(manager, memory_db, session_id, work) == []


def test_an_unpicklable_value_put_in_place_is_saved_so_the_commit_check_names_it(manager, memory_db):
    session_id = _stored_id(manager, memory_db, box=[])
    conn = memory_db.open(transaction.TransactionManager())
    view = RequestSession(manager, conn, session_id)
    view["box"].append(lambda: None)
    assert view.settle() == ["box"]
    with pytest.raises(UnstorableSessionValue) as info:
        manager.check_storable(view)
    assert info.value.key == "box"
    conn.transaction_manager.abort()
    conn.close()


def test_forget_changes_starts_the_fingerprint_over(manager, memory_db):
    session_id = _stored_id(manager, memory_db, cart=["apple"])

    def work(view):
        view["cart"].append("pear")
        view.forget_changes()
        assert view["cart"] == ["apple"]

    assert _request(manager, memory_db, session_id, work) == []


def test_settle_twice_saves_once(manager, memory_db):
    session_id = _stored_id(manager, memory_db, cart=["apple"])
    conn = memory_db.open(transaction.TransactionManager())
    view = RequestSession(manager, conn, session_id)
    view["cart"].append("pear")
    assert view.settle() == ["cart"]
    assert view.settle() == []
    conn.transaction_manager.abort()
    conn.close()


def test_unknown_policy_is_refused():
    with pytest.raises(ConfigError) as info:
        SessionManager(unsaved_changes="ignore")  # type: ignore[arg-type]
    assert info.value.key == "unsaved_changes"


def test_changed_keys_names_added_and_removed_keys():
    before = fingerprint({"a": 1, "b": 2})
    assert changed_keys(before, {"a": 1, "b": 2}) == []
    assert changed_keys(before, {"a": 1, "c": 2}) == ["b", "c"]


def test_fingerprint_of_unpicklable_data_is_none():
    assert fingerprint({"f": lambda: None}) is None


# -- through the publisher, which calls settle() before it commits ------------------------


def _cart_app(environ, start_response):
    session = environ["zodbsession.session"]
    if environ["PATH_INFO"] == "/start":
        session["cart"] = []
    else:
        session["cart"].append("x")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(len(session["cart"])).encode()]


def test_error_policy_fails_the_request_and_keeps_the_stored_session(clock, memory_db):
    manager = SessionManager(clock=clock, unsaved_changes="error")
    client = make_client(_cart_app, memory_db, manager=manager)
    client.post("/start")
    assert client.post("/add").status == 500
    assert client.session == {"cart": []}


def test_save_policy_through_the_publisher_survives_a_fresh_cache(manager, file_db):
    database, reopen = file_db
    client = make_client(_cart_app, database, manager=manager)
    client.post("/start")
    assert client.post("/add").text == "1"
    assert _read_after_restart(manager, reopen, client.session_id, "cart") == ["x"]


def _failing_cart_app(environ, start_response):
    session = environ["zodbsession.session"]
    path = environ["PATH_INFO"]
    if path == "/start":
        session["cart"] = []
    elif path == "/add-then-fail":
        session["cart"].append("ghost")
        raise RuntimeError("boom")
    elif path == "/touch":
        session["other"] = 1  # a marked write: it must not carry the ghost along
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(session.get("cart")).encode()]


def test_an_aborted_request_forgets_its_in_place_change_too(manager, file_db):
    """Without this the change stays in the cache: read by the next request, stored by its write."""
    database, reopen = file_db
    client = make_client(_failing_cart_app, database, manager=manager)
    client.post("/start")
    assert client.post("/add-then-fail").status == 500
    assert client.get("/").json() == []
    client.post("/touch")
    assert _read_after_restart(manager, reopen, client.session_id, "cart") == []


def test_a_read_request_keeps_the_session_in_the_cache(manager, tmp_path, load_counter):
    """The abort of a read's empty transaction drops nothing: the next request loads no record."""
    storage = FileStorage(str(tmp_path / "Data.fs"))
    counter = load_counter(storage)
    database = DB(storage)
    try:
        client = make_client(_failing_cart_app, database, manager=manager)
        client.post("/start")
        client.get("/")
        counter.reset()
        counter.active = True
        client.get("/")
        assert counter.by_class["Session"] == 0
    finally:
        database.close()


# -- a property: settle names exactly the keys whose value changed in place -------------------

leaves = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.booleans())
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=2), inner, max_size=3)), max_leaves=8)


def _mutate(value, pick: int) -> None:
    """Change *value* (a list or dict, perhaps nested) in place somewhere, if it has room."""
    containers = []

    def walk(node):
        if isinstance(node, (list, dict)):
            containers.append(node)
            for child in (node if isinstance(node, list) else node.values()):
                walk(child)

    walk(value)
    if not containers:
        return
    target = containers[pick % len(containers)]
    if isinstance(target, list):
        target.append(pick)
    else:
        target[f"k{pick}"] = pick


@settings(max_examples=150, deadline=None)
@given(data=st.dictionaries(st.sampled_from("abcde"), values, min_size=1, max_size=5),
       picks=st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 50)), max_size=4))
def test_settle_names_exactly_the_keys_changed_in_place(data, picks):
    database = DB(MappingStorage())
    manager = SessionManager()
    try:
        session_id = _stored_id(manager, database, **deepcopy(data))
        conn = database.open(transaction.TransactionManager())
        view = RequestSession(manager, conn, session_id)
        for key, pick in picks:
            if key in view:
                _mutate(view[key], pick)
        expected = sorted(key for key in data if view[key] != data[key])
        assert view.settle() == expected
        conn.transaction_manager.abort()
        conn.close()
    finally:
        database.close()
