"""Checking a session's record before it is committed: can it be pickled, and how big is it.

ZODB finds an unpicklable value only inside the commit, where its error names
no key, and it stores a record of any size. ``measure`` pickles a session's
data the way ZODB will (protocol 3, persistent objects as references) but
with no side effect on the live objects: ZODB's own ``ObjectWriter`` would assign
oids to new persistent subobjects. Only on failure does it pickle each value
alone, to name the key that holds the culprit.
"""

from __future__ import annotations

import io
import pickle
import threading
from typing import Any

from persistent import Persistent

from zodbsession.core.errors import SessionTooLarge, UnstorableSessionValue
from zodbsession.core.session import Session

#: The pickle protocol ZODB writes records with.
PROTOCOL = 3

#: What a reference to another persistent object costs in a record: an oid.
_REFERENCE = b"\0" * 8


class _RecordPickler(pickle.Pickler):
    """Pickles like ZODB's writer, but leaves every persistent object alone."""

    def persistent_id(self, obj: Any) -> Any:
        # Persistent objects (the access-time record, a PersistentList in the
        # data) are records of their own: only a reference goes in this one.
        if isinstance(obj, Persistent) and not isinstance(obj, type):
            return _REFERENCE
        return None


_local = threading.local()  # one pickler per thread, reused: making one costs about 1 us


def _pickled_size(obj: Any) -> int:
    pickler: _RecordPickler
    buffer: io.BytesIO
    try:
        pickler, buffer = _local.pickler
    except AttributeError:
        buffer = io.BytesIO()
        pickler = _RecordPickler(buffer, PROTOCOL)
        _local.pickler = pickler, buffer
    try:
        pickler.dump(obj)
        return buffer.tell()
    finally:
        # Hold on to nothing between calls: the memo refers to what was pickled.
        pickler.clear_memo()
        buffer.seek(0)
        buffer.truncate()


def measure(session: Session, max_bytes: int = 0) -> int:
    """The pickled size of *session*'s data; raises if the data cannot be stored.

    ``UnstorableSessionValue`` names the key whose value cannot be pickled;
    ``SessionTooLarge`` is raised when *max_bytes* (0: no limit) is exceeded.
    Only the data mapping is measured (the record adds about 150 bytes of
    bookkeeping); persistent objects in it count as references, their own
    records being neither measured nor checked. It changes nothing.
    """
    data = session._data
    try:
        size = _pickled_size(data)
    except Exception as exc:  # PicklingError, TypeError, AttributeError: it varies by type
        key, error = _culprit(data, exc)
        raise UnstorableSessionValue(key, error) from error
    if max_bytes and size > max_bytes:
        raise SessionTooLarge(size, max_bytes)
    return size


def _culprit(data: dict[str, Any], error: Exception) -> tuple[str | None, BaseException]:
    """The first key whose item cannot be pickled alone, with its error (the failure path only)."""
    for key, value in data.items():
        try:
            _pickled_size((key, value))
        except Exception as exc:
            return key, exc
    return None, error
