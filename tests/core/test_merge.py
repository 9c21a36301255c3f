"""``zodbsession.core.merge``: the three-way merge of a session record, as a pure function.

The property test holds it against a reference merge written here, simply and
independently, with plain ``==`` (a ``PersistentReference`` that cannot vouch
for equality raises, which the reference reads as "different"). The values
drawn are those on which ``==`` and the merge's stricter ``fingerprint``
agree; the examples after it pin where ``fingerprint`` is deliberately
stricter than ``==``. Under either, a name changed on both sides conflicts,
even when both made the same change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from ZODB.ConflictResolution import PersistentReference
from ZODB.POSException import ConflictError

from zodbsession.core.merge import MAX_DEPTH, fingerprint, merge_mapping, merge_session_state

OID_A, OID_B, OID_ACCESS = b"\0" * 7 + b"\x0a", b"\0" * 7 + b"\x0b", b"\0" * 7 + b"\x02"
#: A weak reference read once: ZODB's reference factory hands out one object per spelling.
SHARED_WEAK = PersistentReference(["w", (OID_A,)])


def ref(oid: bytes = OID_A, database: str | None = None) -> PersistentReference:
    """A fresh reference, as unpickling a record makes one."""
    if database is None:
        return PersistentReference((oid, ("persistent.list", "PersistentList")))
    return PersistentReference(["m", (database, oid, ("persistent.list", "PersistentList"))])


def state(data: dict[str, Any] | None = None, **attributes: Any) -> dict[str, Any]:
    """A session's ``__getstate__`` as ZODB unpickles it for conflict resolution."""
    base = {"id": "s" * 43, "created": 1.0, "user_id": None, "_last_access": ref(OID_ACCESS)}
    base.update(attributes)
    base["_data"] = dict(data or {})
    return base


# -- the reference ------------------------------------------------------------------

ABSENT = object()
CONFLICT = "conflict"


def ref_equal(a: Any, b: Any) -> bool:
    if a is ABSENT or b is ABSENT:
        return a is b
    try:
        return bool(a == b)
    except ValueError:  # PersistentReference: "can't reliably compare"
        return False


ACCESS_NAMES = {"_accessed", "_last_access"}


def reference_merge(old: dict, committed: dict, new: dict) -> dict | str:
    """Dict-of-keys three-way merge, as the spec reads, with nothing shared with merge.py."""
    def but(state: dict, names: set[str]) -> dict:
        return {k: v for k, v in state.items() if k not in names}

    removed = [state.get("_removed") for state in (old, committed, new)]
    access: dict[str, Any] = {}
    for side in (committed, new):
        if not ACCESS_NAMES & set(side) and ACCESS_NAMES & set(old):
            return CONFLICT  # the access time removed
        if "_last_access" in side and not ref_equal(side["_last_access"], old.get("_last_access", ABSENT)):
            return CONFLICT  # the old layout's reference is only ever dropped, never changed
    times = [side["_accessed"] for side in (committed, new) if "_accessed" in side]
    if times:
        access["_accessed"] = max(times)  # the later access wins
    if "_last_access" in committed and "_last_access" in new:
        access["_last_access"] = committed["_last_access"]
    for side, other in ((committed, new), (new, committed)):
        touched = "_removed" not in side and not ref_equal(side, old) and ref_equal(
            but(side, ACCESS_NAMES), but(old, ACCESS_NAMES))
        if touched and other.get("_removed") == "idle":
            return CONFLICT  # the sweep must see the access
        if touched and (other.get("_removed") or not ref_equal(other, old)):
            # A touch: the other side's record, with the later access.
            return {**but(other, ACCESS_NAMES), **access}
    if ref_equal(committed, old) or ref_equal(new, old):
        return CONFLICT  # an unchanged rewrite claims the record
    for side in (committed, new):
        if "_removed" in side and ref_equal(but(side, ACCESS_NAMES | {"_removed"}),
                                            but(old, ACCESS_NAMES | {"_removed"})):
            return CONFLICT  # a removal that changed nothing else, an old record migrated or not
    if removed[1] or removed[2]:
        access["_removed"] = removed[1] or removed[2]  # the merged record stays a removal
    names = (set(old) | set(committed) | set(new)) - {"_data", "_removed"} - ACCESS_NAMES

    if any(not ref_equal(old.get(name, ABSENT), side.get(name, ABSENT))
           for name in names for side in (committed, new)):
        return CONFLICT  # a change of anything but the data never merges
    result: dict[str, Any] = {}
    for name in names:
        o, c, n = (s.get(name, ABSENT) for s in (old, committed, new))
        if ref_equal(o, c):
            value = n
        elif ref_equal(o, n):
            value = c
        else:
            return CONFLICT  # changed on both sides, even to the same value
        if value is not ABSENT:
            result[name] = value
    data: dict[str, Any] = {}
    for key in set(old["_data"]) | set(committed["_data"]) | set(new["_data"]):
        o, c, n = (s["_data"].get(key, ABSENT) for s in (old, committed, new))
        if ref_equal(o, c):
            value = n
        elif ref_equal(o, n):
            value = c
        else:
            return CONFLICT  # changed on both sides, even to the same value
        if value is not ABSENT:
            data[key] = value
    result["_data"] = data
    result.update(access)
    return result


def outcome(old: dict, committed: dict, new: dict) -> dict | str:
    try:
        return merge_session_state(old, committed, new)
    except ConflictError as error:
        event(next((kind for kind in ("key", "without changing it", "bookkeeping", "cannot compare")
                    if kind in str(error)), "other"))
        return CONFLICT


# -- the model-based property ---------------------------------------------------------

# Each value is a maker: it builds a fresh, equal object per state, as unpickling does.
json_like = st.recursive(
    st.none() | st.integers(-3, 3) | st.text("xy", max_size=2),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("kj", max_size=1), inner, max_size=3)
    | st.tuples(inner, inner),
    max_leaves=6,
)
VALUE_MAKERS = st.one_of(
    json_like.map(lambda value: lambda: copy.deepcopy(value)),
    st.sampled_from([
        lambda: ref(OID_A),
        lambda: ref(OID_B),
        lambda: ref(OID_A, "other"),
        lambda: [ref(OID_A), 1],
        lambda: {"k": 1, "j": [2]},
        lambda: {"j": [2], "k": 1},  # equal to the one above, built in the other order
        lambda: PersistentReference(["w", (OID_A,)]),  # a weak reference read afresh
        lambda: SHARED_WEAK,
    ]),
)
KEYS = ["a", "b", "c", "d"]
CHANGE = st.one_of(st.just("delete"), VALUE_MAKERS)
ATTRIBUTES = {
    "id": st.sampled_from(["id-1", "id-2", "id-3"]),
    "user_id": st.sampled_from([None, "alice", "bob"]),
    "created": st.sampled_from([1.0, 2.5]),
    "_expiry": st.sampled_from([None, ("idle", 60.0), ("at", 1.7e9), ("browser", 0.0)]),
    "_last_access": st.sampled_from([OID_ACCESS, OID_B]).map(lambda oid: ref(oid)),
    "_accessed": st.sampled_from([5.0, 7.0, 9.0]),
}


@st.composite
def three_states(draw) -> tuple[dict, dict, dict]:
    old_makers: dict[str, Any] = {key: draw(VALUE_MAKERS) for key in KEYS if draw(st.booleans())}
    old_attributes = {name: draw(values) for name, values in ATTRIBUTES.items()
                      if name not in ("_expiry", "_last_access", "_accessed") or draw(st.booleans())}

    def side() -> dict:
        makers = dict(old_makers)
        for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True)):
            operation = draw(CHANGE)
            if operation == "delete":
                makers.pop(key, None)
            else:
                makers[key] = operation
        attributes = dict(old_attributes)
        # Most sides leave the bookkeeping alone, or most examples would conflict on it.
        for name, values in ATTRIBUTES.items() if draw(st.sampled_from([True, False, False])) else ():
            operation = draw(st.sampled_from(["keep", "keep", "keep", "change", "delete"]))
            if operation == "change":
                attributes[name] = draw(values)
            elif operation == "delete":
                attributes.pop(name, None)
        return _build(attributes, makers)

    return _build(old_attributes, old_makers), side(), side()


def _build(attributes: dict[str, Any], makers: dict[str, Any]) -> dict:
    # Fresh objects: an attribute kept is equal across the states, never the same object
    # (references excepted, when the maker hands out one object).
    built = {name: copy.deepcopy(value) if not isinstance(value, PersistentReference) else ref(value.oid)
             for name, value in attributes.items()}
    built["_data"] = {key: make() for key, make in makers.items()}
    return built


@settings(max_examples=800, deadline=None)
@given(three_states())
@example((state({"a": 1}), state({"a": 1, "b": 2}), state({"a": 1, "c": 3})))
@example((state({"a": 1}), state({"a": 2}), state({"a": 2})))
@example((state({"a": 1}), state({}), state({})))
@example((state({"a": 1}), state({}), state({"a": 2})))
@example((state({"a": 1}), state({"a": 1}, user_id="u"), state({"a": 1, "b": 2})))
@example((state({"a": 1}), state({"a": 1}), state({"a": 1, "b": 2})))
def test_merge_agrees_with_the_reference_merge(states):
    old, committed, new = states
    before = [fingerprint(s) for s in states]
    expected = reference_merge(old, committed, new)
    got = outcome(old, committed, new)
    event("conflict" if got == CONFLICT else "merged")
    if expected == CONFLICT or got == CONFLICT:
        assert got == expected
    else:
        assert ref_equal(got, expected)
        assert set(got) == set(expected) and set(got["_data"]) == set(expected["_data"])
    assert [fingerprint(s) for s in states] == before  # the inputs are left as they were


# -- the rules, one example each ---------------------------------------------------------


def test_changes_to_different_keys_both_survive():
    merged = merge_session_state(state({"a": 1}), state({"a": 1, "b": 2}), state({"a": 0, "c": 3}))
    assert merged["_data"] == {"a": 0, "b": 2, "c": 3}


@pytest.mark.parametrize(
    ("old", "committed", "new", "message"),
    [({"a": 1}, {"a": 2}, {"a": 3}, "key 'a' was changed on both sides"),
     ({}, {"a": 2}, {"a": 3}, "key 'a' was changed on both sides"),
     ({"a": 1}, {}, {"a": 3}, "key 'a' was deleted on one side and changed on the other"),
     ({"a": 1}, {"a": 3}, {}, "key 'a' was deleted on one side and changed on the other")],
    ids=["both-changed", "both-added", "deleted-then-changed", "changed-then-deleted"],
)
def test_one_key_changed_differently_on_both_sides_conflicts_naming_the_key(old, committed, new, message):
    with pytest.raises(ConflictError, match=message):
        merge_session_state(state(old), state(committed), state(new))


def test_messages_never_quote_a_value():
    with pytest.raises(ConflictError) as raised:
        merge_session_state(state({"pw": "hunter2"}), state({"pw": "sekrit-1"}), state({"pw": "sekrit-2"}))
    assert "sekrit" not in str(raised.value) and "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("committed", "new"),
    [({"a": 2}, {"a": 2}), ({"a": [2]}, {"a": [2]}), ({}, {}), ({"b": 1}, {"b": 1})],
    ids=["same-increment", "same-list", "both-deleted", "both-added"],
)
def test_the_same_change_on_both_sides_conflicts(committed, new):
    """Each side may have read ``a == 1`` and written ``a + 1``: merging would keep one increment."""
    with pytest.raises(ConflictError, match="changed on both sides"):
        merge_session_state(state({"a": 1}), state(committed), state(new))


def test_deleting_a_key_the_other_side_left_alone_deletes_it():
    merged = merge_session_state(state({"a": 1, "b": 1}), state({"b": 1}), state({"a": 1, "b": 2}))
    assert merged["_data"] == {"b": 2}


@pytest.mark.parametrize("unchanged_side", ["committed", "new"])
def test_a_side_that_rewrote_the_session_unchanged_conflicts(unchanged_side):
    """What ``SessionManager`` writes when it removes a session: the other side must not merge into it."""
    old, changed = state({"a": 1}), state({"a": 1, "b": 2})
    rewrite = state({"a": 1})
    committed, new = (rewrite, changed) if unchanged_side == "committed" else (changed, rewrite)
    with pytest.raises(ConflictError, match="without changing it"):
        merge_session_state(old, committed, new)


@pytest.mark.parametrize(
    ("name", "value"),
    [("id", "rotated"), ("user_id", "alice"), ("_expiry", ("idle", 60.0)), ("created", 2.0),
     ("_added_later", 1)],
    ids=["rotation", "login", "expiry", "created", "added-later"],
)
@pytest.mark.parametrize("side", ["committed", "new"])
def test_a_change_of_any_attribute_but_the_data_never_merges(name, value, side):
    """The container indexes sessions by id, owner and deadline: see merge.py for the failures."""
    changed, other = state({"a": 1}, **{name: value}), state({"a": 1, "b": 2})
    committed, new = (changed, other) if side == "committed" else (other, changed)
    with pytest.raises(ConflictError, match=f"attributes {name} changed, and a change of the bookkeeping"):
        merge_session_state(state({"a": 1}), committed, new)


@pytest.mark.parametrize(("committed", "new"), [({"user_id": "alice"}, {"user_id": "bob"}),
                                                ({"user_id": "alice"}, {"user_id": "alice"}),
                                                ({"id": "rotated"}, {"user_id": "alice"})],
                         ids=["two-users", "one-user", "rotation-and-login"])
def test_attributes_changed_on_both_sides_conflict(committed, new):
    with pytest.raises(ConflictError, match="and a change of the bookkeeping never merges"):
        merge_session_state(state({}), state({"a": 1}, **committed), state({"b": 1}, **new))


def test_an_attribute_deleted_or_added_is_a_change():
    with pytest.raises(ConflictError, match="attributes _expiry changed"):
        merge_session_state(state({}, _expiry=60), state({"a": 1}), state({"b": 1}, _expiry=60))
    with pytest.raises(ConflictError, match="attributes _expiry changed"):
        merge_session_state(state({}), state({"a": 1}, _expiry=60), state({"b": 1}))


def test_the_merged_state_keeps_every_attribute_and_the_access_time_reference():
    old = state({"a": 1})
    merged = merge_session_state(old, state({"a": 1, "b": 2}), state({"a": 1, "c": 3}))
    assert set(merged) == set(old)
    assert merged["_last_access"].oid == OID_ACCESS


# -- what counts as "the same value" --------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [(1, True), (1, 1.0), (0.0, -0.0), ([1], (1,)), ("1", b"1"), ({"a": 1}, {"a": True}),
     ({1, 2}, frozenset({1, 2})), ([1, 2], [1, True]), ([1, 2], [1, 2.0]), ({1: "x"}, {True: "x"}),
     ({"a": [1]}, {"a": [True]}), ((None, "x"), (None, b"x"))],
    ids=["int-bool", "int-float", "signed-zero", "list-tuple", "str-bytes", "nested", "set-frozenset",
         "flat-list-bool", "flat-list-float", "flat-dict-key-bool", "nested-flat", "flat-tuple-bytes"],
)
def test_values_of_other_types_are_different_even_where_eq_says_equal(first, second):
    """``1 == True == 1.0`` and ``0.0 == -0.0``: taking committed's change for "unchanged" would lose it."""
    with pytest.raises(ConflictError, match="key 'a' was changed on both sides"):
        merge_session_state(state({"a": first}), state({"a": second, "c": 1}), state({"a": "third"}))


@pytest.mark.parametrize(
    ("first", "second"),
    [({"a": 1, "b": [2]}, {"b": [2], "a": 1}), ({"x", "y", "z"}, {"z", "y", "x"}),
     (float("nan"), float("nan"))],
    ids=["dict-order", "set-order", "nan"],
)
def test_equal_content_in_another_order_is_the_same_value(first, second):
    """Committed's copy of *first* is *second*: unchanged, so new's change to the key is taken."""
    merged = merge_session_state(state({"a": first}), state({"a": second, "c": 1}), state({"a": "third"}))
    assert merged["_data"] == {"a": "third", "c": 1}


def test_references_are_the_same_when_zodb_would_call_them_equal():
    """Each state holds its own reference object; same oid, same database, not weak: the same."""
    merged = merge_session_state(state({"r": ref(OID_A)}), state({"r": ref(OID_A), "b": 1}),
                                 state({"r": ref(OID_B)}))
    assert merged["_data"]["r"].oid == OID_B and merged["_data"]["b"] == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [(ref(OID_A), ref(OID_B)), (ref(OID_A), ref(OID_A, "other")),
     (PersistentReference(["w", (OID_A,)]), PersistentReference(["w", (OID_A,)])),
     ([ref(OID_A)], [ref(OID_B)])],
    ids=["other-oid", "other-database", "weak-read-twice", "nested"],
)
def test_references_zodb_cannot_vouch_for_are_different(first, second):
    """Committed's *second* is a change of old's *first*: with new's change too, a conflict."""
    with pytest.raises(ConflictError, match="changed on both sides"):
        merge_session_state(state({"r": first}), state({"r": second, "c": 1}), state({"r": None}))


def test_one_weak_reference_object_is_the_same_as_itself():
    merged = merge_session_state(state({"r": SHARED_WEAK}), state({"r": SHARED_WEAK, "c": 1}),
                                 state({"r": None}))
    assert merged["_data"] == {"r": None, "c": 1}


class Liar:
    """Equal to everything: its ``__eq__`` must never decide a merge."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


@dataclass
class Cart:
    items: list[str]


def test_a_class_with_a_lying_eq_is_compared_by_its_state():
    with pytest.raises(ConflictError, match="changed on both sides"):
        merge_session_state(state({"a": Liar(1)}), state({"a": Liar(2)}), state({"a": Liar(3)}))
    merged = merge_session_state(state({"a": Liar(1)}), state({"a": Liar(2)}), state({"a": Liar(1), "b": 1}))
    assert merged["_data"]["a"].value == 2  # committed's change, not "unchanged"


def test_instances_of_plain_classes_compare_by_their_state():
    merged = merge_session_state(state({"cart": Cart(["a"])}), state({"cart": Cart(["a", "b"])}),
                                 state({"cart": Cart(["a"]), "n": 1}))
    assert merged["_data"] == {"cart": Cart(["a", "b"]), "n": 1}
    with pytest.raises(ConflictError):
        merge_session_state(state({"cart": Cart(["a"])}), state({"cart": Cart(["b"])}),
                            state({"cart": Cart(["c"])}))


class Unreducible:
    def __reduce_ex__(self, protocol: int):
        raise TypeError("cannot pickle this")


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [Unreducible(), nested(MAX_DEPTH + 5)], ids=["unreducible", "too-deep"])
def test_a_value_that_cannot_be_compared_conflicts(value):
    with pytest.raises(ConflictError, match="cannot compare"):
        merge_session_state(state({"a": 1}), state({"a": 1, "x": value}), state({"a": 1, "b": 2}))


@pytest.mark.parametrize(
    "broken",
    [("not a dict",), {"id": "x", "_data": ["not", "a", "dict"]}, {"id": "x"}],
    ids=["state-not-a-dict", "data-not-a-dict", "data-missing"],
)
def test_a_state_of_an_unexpected_shape_conflicts(broken):
    with pytest.raises(ConflictError, match="session merge"):
        merge_session_state(state({"a": 1}), state({"a": 1, "b": 2}), broken)


def test_merge_mapping_keeps_the_committed_order_then_the_new_keys():
    merged = merge_mapping({"a": 1}, {"b": 2, "a": 1}, {"a": 1, "c": 3})
    assert list(merged) == ["b", "a", "c"]


# -- the access time ------------------------------------------------------------------------


def timed(data: dict | None = None, accessed: float | None = None, **attributes: Any) -> dict[str, Any]:
    """A state in the current layout: the access time in the record, no ``Maximum``."""
    result = state(data, **attributes)
    del result["_last_access"]
    if accessed is not None:
        result["_accessed"] = accessed
    return result


def test_a_touch_merges_with_a_data_change_keeping_the_later_time():
    merged = merge_session_state(timed({"a": 1}), timed({"a": 1}, 9.0), timed({"a": 2}))
    assert merged["_data"] == {"a": 2} and merged["_accessed"] == 9.0


def test_a_touch_merges_with_a_change_of_the_bookkeeping():
    login, touch = timed({"a": 1}, 5.0, user_id="u"), timed({"a": 1}, 9.0)
    merged = merge_session_state(timed({"a": 1}, 5.0), login, touch)
    assert merged["user_id"] == "u" and merged["_accessed"] == 9.0


def test_two_touches_merge_to_the_later_time():
    merged = merge_session_state(timed({}, 5.0), timed({}, 9.0), timed({}, 7.0))
    assert merged["_accessed"] == 9.0


@pytest.mark.parametrize("why, conflicts", [("idle", True), ("ended", False)])
def test_a_touch_conflicts_only_with_a_removal_decided_by_the_access_time(why, conflicts):
    old, touched, removed = timed({"a": 1}, 5.0), timed({"a": 1}, 9.0), timed({"a": 1}, 5.0, _removed=why)
    for committed, new in ((touched, removed), (removed, touched)):
        if conflicts:
            with pytest.raises(ConflictError):
                merge_session_state(old, committed, new)
        else:
            assert merge_session_state(old, committed, new)["_removed"] == "ended"


def test_a_removal_that_only_migrated_an_old_record_is_an_unchanged_rewrite():
    old = state({"a": 1})  # the old layout: a reference to the Maximum
    removal = timed({"a": 1}, 5.0, _removed="ended")  # written by the current code: migrated
    with pytest.raises(ConflictError, match="without changing it"):
        merge_session_state(old, removal, state({"a": 1, "b": 2}))


def test_an_access_time_that_is_not_a_float_conflicts():
    with pytest.raises(ConflictError):
        merge_session_state(timed({}, 5.0), timed({}, 9.0), timed({}, "7"))
