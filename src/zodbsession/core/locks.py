"""Locks by name, made on first use and dropped when nobody holds or waits for them, with a bounded queue.

The front doors hold one per session id (``serialize_same_session``), so that
concurrent writes to one session run one after another in this process
instead of conflicting. Which attempts take the session's turn is
``takes_turn``'s rule: a request with an unsafe method (POST, PUT, PATCH,
DELETE, ...) and any retried attempt; a first attempt with a safe method (GET,
HEAD, OPTIONS, TRACE) runs beside the others, since reads never conflict (each
connection reads its own snapshot), so a page's parallel reads on one cookie
neither wait nor get refused. A safe request that writes anyway and conflicts
is retried under the turn. Ids are unbounded and mostly seen once: a lock that
outlived its last holder would be a leak.

The queue behind one key is bounded twice: at most ``max_waiting`` requests
wait behind the one holding it (past that, ``SessionBusy`` at once: a 429),
and none waits longer than ``wait_timeout`` seconds (``SessionWaitTimeout``,
a ``SessionBusy``: a 503). A waiting request holds a server thread under WSGI
(waitress), so the count bound is what keeps one cookie from taking the whole
pool; under asyncio (``AsyncKeyedLocks``) it holds no thread, and the same
bound keeps the wait short. Both tell the refused client an honest
``Retry-After``: the mean time a holder keeps the lock, times the requests
ahead of it.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

from zodbsession.core.errors import SessionBusy, SessionWaitTimeout

#: Requests that may wait behind the one holding a session, by default: with
#: it, six run or wait at once, the connections a browser opens to one host.
MAX_WAITING = 5
#: Seconds a request may wait for its session's lock, by default.
WAIT_TIMEOUT = 10.0

#: RFC 9110's safe methods (section 9.2.1): a request with one of them is not meant to change anything.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def takes_turn(method: str, attempt_number: int) -> bool:
    """Whether an attempt waits for its session's turn: an unsafe method's, or any retry's."""
    return attempt_number > 1 or method.upper() not in SAFE_METHODS


class _Bounded:
    """The table of keys and the bound on their queues, shared by the thread and asyncio locks.

    Threading: a short guard lock protects the table, never held while
    waiting for a key's own lock.
    """

    def __init__(self, max_waiting: int | None = MAX_WAITING, wait_timeout: float | None = WAIT_TIMEOUT):
        if max_waiting is not None and max_waiting < 0:
            raise ValueError(f"max_waiting must be at least 0 (or None: unbounded), not {max_waiting}")
        if wait_timeout is not None and wait_timeout <= 0:
            raise ValueError(f"wait_timeout must be over 0 seconds (or None: unbounded), not {wait_timeout}")
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self._guard = threading.Lock()
        self._locks: dict[str, list[Any]] = {}  # {key -> [lock, holders and waiters]}
        self._mean_hold = 0.0  # seconds, a moving average of how long a holder keeps a lock
        self.refused = 0  # requests refused with a full queue, since the start
        self.timed_out = 0  # requests whose wait passed wait_timeout, since the start

    def waiting(self, key: str) -> int:
        """How many requests wait for *key* (not counting the one holding it)."""
        with self._guard:
            entry = self._locks.get(key)
            return max(entry[1] - 1, 0) if entry is not None else 0

    def retry_after(self, ahead: int) -> int:
        """Seconds a client should wait with *ahead* requests before it: at least 1."""
        return max(1, math.ceil(self._mean_hold * (ahead + 1)))

    def _join(self, key: str, make_lock: Any) -> list[Any]:
        with self._guard:
            entry = self._locks.get(key)
            ahead = entry[1] if entry is not None else 0
            if self.max_waiting is not None and ahead > self.max_waiting:
                self.refused += 1
                raise SessionBusy(ahead, self.max_waiting, self.retry_after(ahead))
            if entry is None:
                entry = self._locks[key] = [make_lock(), 0]
            entry[1] += 1
            return entry

    def _leave(self, key: str, entry: list[Any], held_since: float | None) -> None:
        with self._guard:
            if held_since is not None:
                self._mean_hold += (time.monotonic() - held_since - self._mean_hold) * 0.2
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]

    def _gave_up(self, key: str, entry: list[Any]) -> SessionWaitTimeout:
        self._leave(key, entry, None)
        with self._guard:
            self.timed_out += 1
            ahead = entry[1]
        return SessionWaitTimeout(ahead, self.max_waiting or 0, self.retry_after(ahead))


class KeyedLocks(_Bounded):
    """One thread lock per key, existing only while someone holds or waits for it.

    Threading: any thread may ``hold`` any key.
    """

    def hold(self, key: str) -> KeyedLock:
        """A context manager holding *key*'s lock for its block; ``SessionBusy`` past the bounds."""
        return KeyedLock(self, key)


class KeyedLock:
    """One holding of a key in ``KeyedLocks`` (a class, not a generator: it is on every request)."""

    __slots__ = ("_locks", "_key", "_entry", "_since")

    def __init__(self, locks: KeyedLocks, key: str) -> None:
        self._locks = locks
        self._key = key

    def __enter__(self) -> None:
        locks = self._locks
        entry = locks._join(self._key, threading.Lock)
        timeout = locks.wait_timeout if locks.wait_timeout is not None else -1
        if not entry[0].acquire(timeout=timeout):
            raise locks._gave_up(self._key, entry)
        self._entry = entry
        self._since = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self._entry[0].release()
        self._locks._leave(self._key, self._entry, self._since)


class AsyncKeyedLocks(_Bounded):
    """``KeyedLocks`` for asyncio: one ``asyncio.Lock`` per key, waiters counted, no thread held.

    Threading: for one event loop; the guard makes the table safe anyway.
    """

    def hold(self, key: str) -> AsyncKeyedLock:
        """An async context manager holding *key*'s lock; ``SessionBusy`` past the bounds."""
        return AsyncKeyedLock(self, key)


class AsyncKeyedLock:
    """One holding of a key in ``AsyncKeyedLocks``."""

    __slots__ = ("_locks", "_key", "_entry", "_since")

    def __init__(self, locks: AsyncKeyedLocks, key: str) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        locks = self._locks
        entry = locks._join(self._key, asyncio.Lock)
        try:
            if locks.wait_timeout is None:
                await entry[0].acquire()
            else:
                await asyncio.wait_for(entry[0].acquire(), locks.wait_timeout)
        except TimeoutError:
            raise locks._gave_up(self._key, entry) from None
        except BaseException:
            locks._leave(self._key, entry, None)  # cancelled while waiting
            raise
        self._entry = entry
        self._since = time.monotonic()

    async def __aexit__(self, *exc: object) -> None:
        self._entry[0].release()
        self._locks._leave(self._key, self._entry, self._since)
