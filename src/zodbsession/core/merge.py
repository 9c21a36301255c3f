"""The three-way merge of a session record, which ZODB runs when two transactions wrote one session.

When two transactions change the same ``Session`` from the same snapshot, the
second commit hands ZODB three states: the one both started from (*old*), the
one already committed and its own (*new*). ``merge_session_state`` either
returns the merged state or raises ``ConflictError`` (and the request is
retried). It is a pure function of the three unpickled states: persistent
subobjects arrive as ``PersistentReference``, everything else as plain values.

For every key of the application's data, one key at a time, where
"changed" includes added and deleted:

=========================  =========================  ======================
committed changed it       new changed it             the merged record has
=========================  =========================  ======================
no                         no                         the value (unchanged)
no                         yes                        new's value
yes                        no                         committed's value
yes                        yes                        -- ``ConflictError``
=========================  =========================  ======================

Changed on both sides conflicts even when both made the same change, or both
deleted the key: two requests that each read ``n == 1`` and wrote ``n = 2``
made two increments, and merging them would keep one; two requests that
each popped the same one-time token would both have used it.

The rest of the record, its bookkeeping (id, created, user_id, its own
expiry, any attribute added later), never merges: a write that changed it
conflicts with every concurrent write of the session. The container indexes
a session by id, owner and deadline, each side updated those indexes from
its own snapshot, and the other side's request looked the session up by the
id and owner it read:

- a rotation merged with a login left the user index naming the old id;
- a login merged with a request that changed data and revoked the session
  left the user index naming the revoked session;
- a rotation merged with a change of another key kept that change, though
  in neither order of the two requests would it have survived (one the
  other request's delete, the other its lookup by the old id).

And, for the record as a whole: a side whose state is *the same as old* did
not change the session but rewrote it to claim it. ``SessionManager`` does
that when it removes a session (revoke, logout, the sweep), so that a
concurrent change conflicts instead of landing in an unreachable object.
Such a record never merges. (A request that changed data and then removed
the session merges with a concurrent change of another key, as if that
change had come just before the removal: either way the session is gone.)

The last-access time is the exception to both rules. It lives in the record
(``_accessed``; in old records a reference to a separate ``Maximum`` under
``_last_access``, which a write drops after folding its time in), and:

- two sides that changed it merge to the later time (``max``), wherever
  else they changed the record;
- a side whose *only* change is the access time (a touch) merges with any
  change of the other side, bookkeeping included: the result is the other
  side's record with the later time. That is exactly what the old layout,
  with the time in a record of its own, gave: a touch changes no index, and
  a later access only moves the deadline later, which keeps the expiry
  index's invariant (entries early, never late);
- a removal (``SessionManager`` marks the record it removes: ``_removed``)
  that changed nothing else is an unchanged rewrite, even when it folded an
  old record's access time in, so a concurrent change conflicts; a touch
  merges into a revocation or logout (the session is gone either way, as
  with the old layout) but conflicts with a removal decided by the access
  time (the sweep, the cap's eviction), which then re-checks the session:
  used meanwhile, it survives.

"The same value" is decided by ``fingerprint``, never by a value's own
``__eq__``: type for type, item for item, so ``1``, ``1.0`` and ``True``
differ; two references are the same when ZODB's ``PersistentReference``
would call them equal (same oid and database, and not weak) or are one
object. A value that cannot be fingerprinted, anywhere in the record, makes
the merge conflict.
"""

from __future__ import annotations

import types
from collections.abc import Hashable, Iterator, Mapping
from typing import Any, Final

from ZODB.ConflictResolution import PersistentReference
from ZODB.POSException import ConflictError

#: The pickle protocol ZODB writes records with; values are reduced with it.
PROTOCOL = 3

#: Values nested deeper than this are not compared: the merge conflicts.
MAX_DEPTH = 100

#: The attribute of a session's state that holds the application's data.
DATA = "_data"

#: The attribute holding a session's last-access time (a float, epoch seconds).
ACCESSED = "_accessed"

#: Where old records kept it: a reference to a separate ``zope.minmax.Maximum``.
LEGACY_ACCESS = "_last_access"

#: The attribute ``SessionManager`` sets on a session it removes (why, see ``REMOVED_IDLE``).
REMOVED = "_removed"

#: ``REMOVED``'s value when the removal was decided by the access time (the
#: sweep, the cap's eviction): it conflicts with a concurrent touch.
REMOVED_IDLE = "idle"

#: ``REMOVED``'s value for any other removal (revoke, logout): a touch merges into it.
REMOVED_ENDED = "ended"

_ACCESS = (ACCESSED, LEGACY_ACCESS)

class _Missing:
    """The type of ``MISSING``: compares and hashes by identity."""

    def __repr__(self) -> str:
        return "<missing>"


#: Stands for a name absent from a state.
MISSING: Final = _Missing()

_ATOMS = frozenset({type(None), bool, int, str, bytes})
_SEQUENCES = frozenset({list, tuple})
_SETS = frozenset({set, frozenset})
# Pickled by name, so compared as the object itself.
_GLOBALS = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType)


class _Incomparable(Exception):
    """A value that cannot be fingerprinted (too deep, cannot be reduced)."""


def fingerprint(value: Any, depth: int = 0) -> Hashable:
    """A hashable stand-in for *value*: two values with equal fingerprints are the same.

    Never calls the value's ``__eq__``: a class that defines equality loosely
    (or a ``PersistentReference``, which raises) cannot make two different
    values look the same. Built-in containers compare by content (a dict's or
    set's order does not matter); any other object compares by what it
    pickles to (its ``__reduce_ex__``), so an object of a class that could
    not be imported, or cannot be pickled, raises.
    """
    if depth > MAX_DEPTH:
        raise _Incomparable(f"nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if kind in _ATOMS:
        return (kind, value)
    if kind is float:
        return (kind, value.hex())  # tells -0.0 from 0.0; every NaN is the same
    if kind is complex:
        return (kind, value.real.hex(), value.imag.hex())
    inner = depth + 1
    if kind in _SEQUENCES:
        kinds = tuple(map(type, value))
        if _ATOMS.issuperset(kinds):  # flat: compared item for item and type for type, at C speed
            return (kind, "flat", tuple(value), kinds)
        return (kind, tuple([fingerprint(item, inner) for item in value]))
    if kind is dict:
        keys, values = value.keys(), value.values()
        if _ATOMS.issuperset(map(type, keys)) and _ATOMS.issuperset(map(type, values)):
            items = zip(keys, map(type, keys), values, map(type, values), strict=True)
            return (kind, "flat", frozenset(items))
        return (kind, frozenset([(fingerprint(k, inner), fingerprint(v, inner)) for k, v in value.items()]))
    if kind in _SETS:
        return (kind, frozenset(fingerprint(item, inner) for item in value))
    if kind is PersistentReference:
        if value.weak:
            # ZODB vouches for a weak reference only as itself; one spelling
            # read in one resolution is one object (its factory caches them).
            return (kind, "weak", id(value))
        return (kind, value.oid, value.database_name)
    if isinstance(value, _GLOBALS):
        return ("global", value)
    reduced = value.__reduce_ex__(PROTOCOL)
    if isinstance(reduced, str):
        return ("global", kind, reduced)
    return (kind, "reduced", tuple(_reduced_part(part, inner) for part in reduced))


def _reduced_part(part: Any, depth: int) -> Hashable:
    # The list and dict items of a reduction are iterators: compare their items in order.
    if isinstance(part, Iterator):
        return ("items", tuple(fingerprint(item, depth) for item in part))
    return fingerprint(part, depth)


def _fingerprint_of(value: Any, where: str) -> Hashable:
    """``fingerprint``, with an incomparable value turned into the conflict it causes."""
    if isinstance(value, _Missing):  # MISSING, the only instance
        return value
    try:
        return fingerprint(value)
    except Exception as error:  # any failure to compare must conflict, never merge
        # The error's text may quote the value: only its type goes in the message.
        raise ConflictError(f"session merge: cannot compare {where} ({type(error).__name__})") from None


#: The table above: (committed changed it, new changed it) -> the state whose value is kept.
_DECISIONS: dict[tuple[bool, bool], int | None] = {
    (False, False): 1,
    (False, True): 2,
    (True, False): 1,
    (True, True): None,  # conflict
}


def merge_mapping(old: Mapping[Any, Any], committed: Mapping[Any, Any], new: Mapping[Any, Any],
                  *, what: str = "key") -> dict[Any, Any]:
    """Merge three versions of a mapping key by key (the table above); raises ConflictError.

    The result keeps the committed order, followed by the keys only *new* added.
    """
    versions = (old, committed, new)
    return _merge_fingerprinted(versions, [_fingerprints(version, what) for version in versions], what)


def _fingerprints(mapping: Mapping[Any, Any], what: str) -> dict[Any, Hashable]:
    """Each value's fingerprint, under its key; raises ConflictError naming an incomparable one."""
    return {key: _fingerprint_of(value, f"{what} {_describe(key)}") for key, value in mapping.items()}


def _merge_fingerprinted(versions: tuple[Mapping[Any, Any], ...], prints: list[dict[Any, Hashable]],
                         what: str) -> dict[Any, Any]:
    old, committed, new = versions
    merged: dict[Any, Any] = {}
    for key in [*committed, *(key for key in new if key not in committed),
                *(key for key in old if key not in committed and key not in new)]:
        o, c, n = (fingerprints.get(key, MISSING) for fingerprints in prints)
        keep = _DECISIONS[c != o, n != o]
        if keep is None:
            how = "deleted on one side and changed on the other" if MISSING in (c, n) and c != n \
                else "changed on both sides"
            raise ConflictError(f"session merge: {what} {_describe(key)} was {how}")
        value = versions[keep].get(key, MISSING)
        if value is not MISSING:
            merged[key] = value
    return merged


def merge_session_state(old: Any, committed: Any, new: Any, *, by_key: tuple[str, ...] = (DATA,)
                        ) -> dict[str, Any]:
    """Merge three states of a ``Session`` record (its ``__getstate__`` dicts); raises ConflictError.

    The attributes named in *by_key* (the application's data) are merged
    key by key; the access time merges to the later one; the other
    attributes (the bookkeeping) must be unchanged on both sides, unless
    one side only touched the session. A side that rewrote the record
    unchanged, or removed it, conflicts. See the module docstring for why.
    Every value is fingerprinted once.
    """
    states = (old, committed, new)
    if not all(type(state) is dict for state in states):
        raise ConflictError("session merge: a state is not a plain attribute dict")
    for name in by_key:
        if not all(type(state.get(name)) is dict for state in states):
            raise ConflictError(f"session merge: attribute {name!r} is not a dict on every side")
    removed = [state.get(REMOVED) for state in states]
    apart = (*by_key, *_ACCESS, REMOVED)
    bookkeeping = [_fingerprints(_without(state, apart), "attribute") for state in states]
    access = [_fingerprints(_only(state, _ACCESS), "attribute") for state in states]
    data = {name: [_fingerprints(state[name], "key") for state in states] for name in by_key}

    def same_as_old(side: int, *, but_access: bool) -> bool:
        return bookkeeping[side] == bookkeeping[0] and (but_access or access[side] == access[0]) \
            and all(prints[side] == prints[0] for prints in data.values())

    times = _merged_access(old, committed, new)
    for side in (1, 2):
        other = 3 - side
        if not removed[side] and access[side] != access[0] and same_as_old(side, but_access=True):
            # A touch: the other side's record, with the later time; but a
            # removal decided by the access time must see this access.
            if removed[other] == REMOVED_IDLE:
                raise ConflictError("session merge: a touch raced the removal of the session as idle")
            if not removed[other] and same_as_old(other, but_access=False):
                break  # an unchanged rewrite claims the record: refused below
            merged = _without(states[other], _ACCESS)
            merged.update(times)
            return merged
    for side in (1, 2):
        # A removal that changed nothing else (an old record's access time
        # folded in is no change) is an unchanged rewrite.
        if same_as_old(side, but_access=bool(removed[side])):
            raise ConflictError("session merge: one side rewrote the session without changing it "
                                "(it was removed, or claimed on purpose)")
    changed = {name for side in (1, 2) for name in bookkeeping[0].keys() | bookkeeping[side].keys()
               if bookkeeping[0].get(name, MISSING) != bookkeeping[side].get(name, MISSING)}
    if changed:
        # The other side changed something too: an unchanged rewrite was refused above.
        raise ConflictError(f"session merge: attributes {', '.join(sorted(map(str, changed)))} changed, "
                            "and a change of the bookkeeping never merges")
    merged = _without(committed, apart)
    for name, prints in data.items():
        merged[name] = _merge_fingerprinted((old[name], committed[name], new[name]), prints, "key")
    merged.update(times)
    if removed[1] or removed[2]:
        merged[REMOVED] = removed[1] or removed[2]
    return merged


def _merged_access(old: dict[str, Any], committed: dict[str, Any], new: dict[str, Any]
                   ) -> dict[str, Any]:
    """The access attributes of a merged record: the later time, the old reference only if both kept it.

    The old layout's reference is never changed, only dropped: a side that
    changed it conflicts.
    """
    merged: dict[str, Any] = {}
    for side in (committed, new):
        if not side.keys() & _ACCESS and old.keys() & _ACCESS:
            raise ConflictError("session merge: one side has no access time")
        if LEGACY_ACCESS in side and (LEGACY_ACCESS not in old or _fingerprint_of(
                side[LEGACY_ACCESS], "attribute") != _fingerprint_of(old[LEGACY_ACCESS], "attribute")):
            raise ConflictError(f"session merge: attribute {LEGACY_ACCESS!r} changed")
    times = [state[ACCESSED] for state in (committed, new) if ACCESSED in state]
    if times:
        if not all(type(time) is float for time in times):
            raise ConflictError(f"session merge: attribute {ACCESSED!r} is not a float on every side")
        merged[ACCESSED] = max(times)
    if LEGACY_ACCESS in committed and LEGACY_ACCESS in new:  # neither side migrated the old record
        merged[LEGACY_ACCESS] = committed[LEGACY_ACCESS]
    # A side that dropped the reference folded the old record's time into its
    # own (``Session.__getstate__``), and nothing writes that record any more.
    return merged


def _only(state: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: state[name] for name in names if name in state}


def _without(state: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: value for name, value in state.items() if name not in names}


def _describe(key: Any, limit: int = 60) -> str:
    """A key for a message: its repr, cut short (values never appear in messages)."""
    text = repr(key) if isinstance(key, str | int) else f"of type {type(key).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."

