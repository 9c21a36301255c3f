"""Tests for session_dict.py: the view has dict's methods, and ``as_dict()`` is an actual
dict whose storage (what ``json``'s C encoder reads) stays equal to the session's data."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from zodbsession.core.request_session import RequestSession
from zodbsession.core.session_dict import SessionDict


def _commit(conn) -> None:
    conn.transaction_manager.commit()


@pytest.fixture
def stored_id(manager, memory_db, connect) -> str:
    """The id of a committed session holding a, b, c in that order."""
    conn = connect(memory_db)
    session = manager.new(conn)
    session.update(a=1, b=[2], c=3)
    _commit(conn)
    return session.id


def storage(face: SessionDict) -> dict:
    """What C code reads: the dict's own storage, not its methods."""
    return dict(dict.items(face))


def test_a_found_sessions_face_mirrors_its_data_from_the_start(manager, memory_db, connect, stored_id):
    face = RequestSession(manager, connect(memory_db), stored_id).as_dict()
    assert isinstance(face, dict)
    assert storage(face) == {"a": 1, "b": [2], "c": 3}
    assert list(dict.keys(face)) == ["a", "b", "c"]
    assert json.dumps(face) == '{"a": 1, "b": [2], "c": 3}'


def test_the_mirror_follows_every_change_made_through_the_view(manager, memory_db, connect, stored_id):
    view = RequestSession(manager, connect(memory_db), stored_id)
    face = view.as_dict()
    assert view.as_dict() is face
    changes = [
        lambda: face.__setitem__("d", 4),
        lambda: view.__setitem__("a", 10),
        lambda: face.__delitem__("b"),
        lambda: face.popitem(),
        lambda: face.setdefault("e", []),
        lambda: face.update({"f": 6}, g=7),
        lambda: face.__ior__({"h": 8}),
        lambda: face.pop("f"),
        lambda: view.flash("hello"),
        lambda: view.get_csrf_token(),
        lambda: view.new_csrf_token(),
        lambda: view.pop_flash(),
        lambda: face.clear(),
        lambda: view.__setitem__("again", 1),
    ]
    for change in changes:
        change()
        data = view._zodbsession_unwrap()._data
        assert storage(face) == data
        assert list(dict.keys(face)) == list(data)
        assert json.loads(json.dumps(face)) == data


def test_invalidate_empties_the_mirror_and_forget_changes_shows_the_stored_data(
        manager, memory_db, connect, stored_id):
    conn = connect(memory_db, explicit=True)
    conn.transaction_manager.begin()
    view = RequestSession(manager, conn, stored_id)
    face = view.as_dict()
    face["z"] = 26
    view.forget_changes()
    assert storage(face) == {"a": 1, "b": [2], "c": 3}
    view.invalidate()
    assert storage(face) == {} and json.dumps(face) == "{}"
    face["new"] = 1
    assert storage(face) == {"new": 1}
    assert view.cookie_to_send() == view.id != stored_id


def test_a_new_sessions_face_is_empty_and_stores_on_its_first_write(manager, memory_db, connect):
    conn = connect(memory_db)
    view = RequestSession(manager, conn, None)
    face = view.as_dict()
    assert not view.resolved  # no cookie: nothing looked up, and the data is empty
    assert json.dumps(face) == "{}"
    face["cart"] = ["x"]
    assert view.cookie_to_send() == view.id
    _commit(conn)
    assert dict(RequestSession(manager, connect(memory_db), view.id)) == {"cart": ["x"]}


def test_writes_through_the_face_merge_by_key_with_a_concurrent_write(manager, db, connect):
    """On a FileStorage, which resolves conflicts (a MappingStorage does not)."""
    setup = connect(db)
    stored = manager.new(setup)
    stored.update(a=1, b=[2], c=3)
    _commit(setup)
    stored_id = stored.id
    first, second = connect(db), connect(db)
    one = RequestSession(manager, first, stored_id).as_dict()
    two = RequestSession(manager, second, stored_id).as_dict()
    one |= {"a": "one"}
    two.update(c="two")
    _commit(first)
    _commit(second)  # a conflict resolved by key (core.merge)
    assert dict(RequestSession(manager, connect(db), stored_id)) == {"a": "one", "b": [2], "c": "two"}


def test_an_in_place_change_through_the_face_is_found_and_saved(manager, memory_db, connect, stored_id):
    conn = connect(memory_db)
    view = RequestSession(manager, conn, stored_id)
    view.as_dict()["b"].append(3)  # nobody marks it
    assert view.settle() == ["b"]
    _commit(conn)
    assert RequestSession(manager, connect(memory_db), stored_id)["b"] == [2, 3]


def test_the_view_itself_is_a_dict_in_behaviour_but_refused_by_json(manager, memory_db, connect, stored_id):
    view = RequestSession(manager, connect(memory_db), stored_id)
    with pytest.raises(TypeError, match="not JSON serializable"):
        json.dumps(view)  # never a wrong "{}": the lazy view is no dict instance
    assert view == {"a": 1, "b": [2], "c": 3} == view.copy()
    assert type(view.copy()) is dict and type(copy.copy(view)) is dict
    assert copy.deepcopy(view)["b"] is not view["b"]
    assert view.popitem() == ("c", 3)  # the last key, as a dict's popitem
    assert list(reversed(view)) == ["b", "a"]
    assert view | {"x": 0} == {"a": 1, "b": [2], "x": 0}
    assert {"a": 0, "y": 1} | view == {"a": 1, "y": 1, "b": [2]}
    with pytest.raises(TypeError, match="unhashable"):
        hash(view)


@pytest.mark.parametrize("make", [lambda view: view, RequestSession.as_dict], ids=["view", "face"])
def test_a_request_session_cannot_be_pickled_or_stored(manager, memory_db, connect, stored_id, make):
    session = make(RequestSession(manager, connect(memory_db), stored_id))
    with pytest.raises(TypeError, match=r"store session\.copy\(\)"):
        pickle.dumps(session)


def test_a_session_dict_is_not_made_from_data():
    with pytest.raises(TypeError, match="as_dict"):
        SessionDict({"a": 1})
