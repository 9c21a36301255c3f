"""Finding the in-place changes a request made to its session but never marked.

``session["cart"].append(item)`` changes a list inside the session's record
without telling ZODB: the change reads back in the same process (the object
cache holds it) and is gone after a restart. To never lose one silently, a
request's view takes a *fingerprint* of a found session's data when it loads
it: the data mapping pickled as ZODB would store it (protocol 3, persistent
subobjects as references, which are records of their own and saved by ZODB
itself), one ``dump`` of a reused pickler. ``settle`` compares the data with it at the end of the request, and
what differs in a session nobody marked changed is handled by the manager's
``unsaved_changes`` policy:

====================  =========================================================
``"save"`` (default)  mark the session changed, so the commit stores it
``"warn"``            the same, and log a WARNING naming the keys (to find the
                      missing ``save_changes()`` calls)
``"error"``           raise ``UnsavedSessionChanges`` naming the keys: the
                      request fails and aborts (for test suites)
====================  =========================================================

The cost is paid only by requests that use a session they found, and is
measured in ``docs/testing.md``; and not even by those when every value in the
session is immutable (``holds_only_immutables``): a value of an exact type
among ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``bool``, ``None``
(or a ``tuple``/``frozenset`` of such values) has no method that changes it, so
the only way to change such a session is through its mapping's own methods,
which mark the record changed. A fingerprint could only ever find nothing, so
none is taken: the read fast path (``docs/benchmarks.md``).
"""

from __future__ import annotations

import io
import logging
import pickle
import threading
from typing import Any, Literal

from persistent import Persistent

log = logging.getLogger(__name__)

UnsavedPolicy = Literal["save", "warn", "error"]
UNSAVED_POLICIES: tuple[UnsavedPolicy, ...] = ("save", "warn", "error")

#: The pickle protocol ZODB writes records with.
PROTOCOL = 3

#: The data mapping's pickled state.
Fingerprint = bytes


class _Reference:
    """A persistent object in a fingerprint: only its identity is kept."""

    __slots__ = ("identity",)

    def __init__(self, identity: int) -> None:
        self.identity = identity

    def __reduce__(self) -> tuple[type[_Reference], tuple[int]]:
        return (_Reference, (self.identity,))


class _StatePickler(pickle.Pickler):
    """Pickles a value's state; a persistent object counts as a reference to itself.

    The reference is the object's identity, which cannot change without an
    assignment (itself a marked change); its own state is its own record's,
    and a ghost stays a ghost. ``reducer_override`` rather than
    ``persistent_id``: the C pickler asks it only about objects that are not
    builtin values or containers, so plain data pickles at C speed.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Persistent) and not isinstance(obj, type):
            return (_Reference, (id(obj),))
        return NotImplemented


_local = threading.local()  # one pickler per thread, reused: making one costs about 1 us


def _pickled(value: Any) -> bytes:
    pickler: _StatePickler
    buffer: io.BytesIO
    try:
        pickler, buffer = _local.pickler
    except AttributeError:
        buffer = io.BytesIO()
        pickler = _StatePickler(buffer, PROTOCOL)
        _local.pickler = pickler, buffer
    try:
        pickler.dump(value)
        return buffer.getvalue()
    finally:
        # Hold on to nothing between calls: the memo refers to what was pickled.
        pickler.clear_memo()
        buffer.seek(0)
        buffer.truncate()


#: The exact types whose values nothing can change in place (subclasses may add mutable state).
IMMUTABLE_TYPES: frozenset[type] = frozenset({int, float, complex, str, bytes, bool, type(None)})


def holds_only_immutables(data: dict[str, Any]) -> bool:
    """Whether every value in *data* is immutable all the way down, so no in-place change is possible.

    Exact types only (``IMMUTABLE_TYPES``; a ``tuple`` or ``frozenset`` counts
    when its members do): a subclass of ``int`` can carry a mutable
    ``__dict__``. One look at each value, no pickling: this is what lets a
    read of such a session skip the fingerprint.
    """
    immutable = IMMUTABLE_TYPES
    for value in data.values():
        kind = type(value)
        if kind in immutable:
            continue
        if (kind is tuple or kind is frozenset) and _members_immutable(value):
            continue
        return False
    return True


def _members_immutable(members: tuple[Any, ...] | frozenset[Any], depth: int = 0) -> bool:
    if depth > 20:  # a pathological nesting: let the fingerprint decide
        return False
    for value in members:
        kind = type(value)
        if kind in IMMUTABLE_TYPES:
            continue
        if (kind is tuple or kind is frozenset) and _members_immutable(value, depth + 1):
            continue
        return False
    return True


def fingerprint(data: dict[str, Any]) -> Fingerprint | None:
    """*data* pickled; None when it cannot be (nothing is then checked)."""
    try:
        return _pickled(data)
    except Exception:  # PicklingError, TypeError, RecursionError: the commit will say so
        return None


def changed_keys(before: Fingerprint, data: dict[str, Any]) -> list[str]:
    """The keys of *data* whose state differs from *before*: changed, added or removed.

    The common case, nothing changed, costs one pickle and one comparison;
    only when they differ is *before* unpickled to name the keys.
    """
    after = fingerprint(data)
    if after == before:
        return []
    try:
        old = pickle.loads(before)
        keys = set(old) | set(data)
        return sorted(key for key in keys
                      if key not in old or key not in data or _pickled(old[key]) != _pickled(data[key]))
    except Exception:
        # Something cannot be pickled (put in place) or loaded back: count
        # every key as changed; the commit's own check names a culprit.
        return sorted(data)
