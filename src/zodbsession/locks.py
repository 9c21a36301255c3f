"""Locks by name, made on first use and dropped when nobody holds or waits for them.

The publisher holds one per session id (``serialize_same_session``), so that
concurrent requests on one session run one after another in this process
instead of conflicting. Ids are unbounded and mostly seen once: a lock that
outlived its last holder would be a leak.
"""

from __future__ import annotations

import threading
from typing import Any


class KeyedLocks:
    """One lock per key, existing only while someone holds or waits for it.

    Threading: any thread may ``hold`` any key; a short guard lock protects
    the table, never held while waiting for a key's own lock.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list[Any]] = {}  # {key -> [lock, holders and waiters]}

    def hold(self, key: str) -> KeyedLock:
        """A context manager holding *key*'s lock for its block."""
        return KeyedLock(self, key)


class KeyedLock:
    """One holding of a key in ``KeyedLocks`` (a class, not a generator: it is on every request)."""

    __slots__ = ("_locks", "_key", "_entry")

    def __init__(self, locks: KeyedLocks, key: str) -> None:
        self._locks = locks
        self._key = key

    def __enter__(self) -> None:
        with self._locks._guard:
            entry = self._locks._locks.setdefault(self._key, [threading.Lock(), 0])
            entry[1] += 1
        entry[0].acquire()
        self._entry = entry

    def __exit__(self, *exc: object) -> None:
        self._entry[0].release()
        with self._locks._guard:
            self._entry[1] -= 1
            if self._entry[1] == 0:
                del self._locks._locks[self._key]
