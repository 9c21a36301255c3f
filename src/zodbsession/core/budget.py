"""A per-client-address budget of new sessions and logins, so one address cannot take the cap.

Where sign-up is free, ``max_sessions`` is anyone's to fill: one address
posting logins in a loop fills it with "users'" sessions. The cap's eviction
(``SessionManager._make_room``) keeps the site open to others, by evicting
the least recently used sessions; this budget keeps one address from
churning through everybody's sessions that way. Each address gets
``per_minute`` new sessions and logins a minute (a token bucket: a burst of
that many, then one every ``60 / per_minute`` seconds); past it, the request
is refused with ``TooManyNewSessions`` (503 with ``Retry-After``) before
anything is stored. Requests that use an existing session are never charged.

The address is the one the server gives the request (``REMOTE_ADDR``, the
ASGI ``client``): behind a proxy, list ``x-forwarded-for`` in
``server.trusted_proxy_headers`` so that it is the client's, not the
proxy's.

Where the buckets live decides what the budget bounds. In one process they
are a dict (``AddressBudget`` alone). ``serve --workers N`` calls
``share_across_forks()`` in its parent before forking: the buckets then live
in one ``SharedBuckets`` table, an unlinked 0600 temporary file mapped into
every worker, so the N workers of one ``serve`` spend one budget between
them (not N). Across machines nothing is shared: an address gets the budget
once per ``serve`` behind the balancer.

Threading: one lock, held for a bucket update (in the shared table also a
POSIX record lock on the file, which the kernel drops if a worker dies
holding it). At most ``MAX_ADDRESSES`` addresses are remembered in a process
(``SHARED_SLOTS`` in the shared table); the least recently seen are forgotten,
which only ever gives an address its full budget back.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from zodbsession.core.errors import TooManyNewSessions

#: Addresses remembered at once; beyond it the least recently seen is forgotten.
MAX_ADDRESSES = 65536
#: Slots of the table ``serve --workers`` shares (32 bytes each: 2 MiB).
SHARED_SLOTS = 65536
#: Slots an address may occupy in the shared table (open addressing); when all are taken the stalest goes.
SHARED_PROBES = 8
_SLOT = struct.Struct("<8sdd")  # address digest, tokens, at (time.monotonic, the same in every process)
_SLOT_SIZE = 32


class SharedBuckets:
    """Token buckets by address in memory that forked processes share; made before the fork.

    An unlinked temporary file (0600: only this user), mapped shared, with
    ``SHARED_SLOTS`` fixed slots of (digest, tokens, at). Digests are keyed
    with a random key of this table, so nobody can choose addresses that
    collide. A POSIX record lock on the file (per process) and a thread lock
    (per thread) make each update whole.
    """

    def __init__(self, slots: int = SHARED_SLOTS) -> None:
        self.slots = slots
        self._key = os.urandom(16)
        self._file = tempfile.TemporaryFile()  # noqa: SIM115  # unlinked at once, 0600; lives as the table
        self._file.truncate(slots * _SLOT_SIZE)
        self._map = mmap.mmap(self._file.fileno(), slots * _SLOT_SIZE)  # MAP_SHARED
        self._lock = threading.Lock()

    def update(self, address: str,
               change: Callable[[float | None, float | None], tuple[float, float]]) -> None:
        """Replace *address*'s bucket with ``change(tokens, at)`` (None, None: no bucket yet)."""
        digest = hashlib.blake2b(address.encode("utf-8", "surrogatepass"), digest_size=8,
                                 key=self._key).digest()
        if digest == bytes(8):
            digest = b"\x01" + digest[1:]  # all zeros marks an empty slot
        first = int.from_bytes(digest, "little") % self.slots
        with self._lock:
            fcntl.lockf(self._file.fileno(), fcntl.LOCK_EX)
            try:
                slot, tokens, at = self._find(digest, first)
                new_tokens, new_at = change(tokens, at)
                self._map[slot * _SLOT_SIZE:slot * _SLOT_SIZE + _SLOT.size] = _SLOT.pack(
                    digest, new_tokens, new_at)
            finally:
                fcntl.lockf(self._file.fileno(), fcntl.LOCK_UN)

    def _find(self, digest: bytes, first: int) -> tuple[int, float | None, float | None]:
        """The slot for *digest*: its own, else an empty one, else the stalest of its probes."""
        stalest, stalest_at = first, math.inf
        for probe in range(SHARED_PROBES):
            slot = (first + probe) % self.slots
            held, tokens, at = _SLOT.unpack_from(self._map, slot * _SLOT_SIZE)
            if held == digest:
                return slot, tokens, at
            if held == bytes(8):
                return slot, None, None
            if at < stalest_at:
                stalest, stalest_at = slot, at
        return stalest, None, None


#: The table every ``AddressBudget`` of this process uses, once ``share_across_forks`` made one.
_shared: SharedBuckets | None = None


def share_across_forks() -> SharedBuckets:
    """Make the buckets of every later ``AddressBudget`` one table this process's forks share.

    ``serve --workers`` calls it in the parent, before forking the workers
    (which build their budgets after the fork, from the same settings).
    """
    global _shared
    if _shared is None:
        _shared = SharedBuckets()
    return _shared


class AddressBudget:
    """``per_minute`` new sessions and logins per client address; ``charge`` spends one.

    Its buckets are this process's own, or the table ``share_across_forks``
    made before this process was forked (``serve --workers``), if any.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 shared: SharedBuckets | None = None) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.shared = shared if shared is not None else _shared
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)

    def charge(self, address: str | None) -> None:
        """Spend one of *address*'s budget, or raise ``TooManyNewSessions``; None is never charged."""
        if address is None or self.per_minute <= 0:
            return
        rate = self.per_minute / 60.0
        now = self.clock()
        short: list[float] = []

        def spend(tokens: float | None, at: float | None) -> tuple[float, float]:
            if tokens is None or at is None:
                tokens, at = float(self.per_minute), now
            tokens = min(float(self.per_minute), tokens + max(0.0, now - at) * rate)
            if tokens < 1.0:
                short.append(1.0 - tokens)
                return tokens, now
            return tokens - 1.0, now

        if self.shared is not None:
            self.shared.update(address, spend)
        else:
            with self._lock:
                old = self._buckets.pop(address, None)
                self._buckets[address] = spend(*(old or (None, None)))
                while len(self._buckets) > MAX_ADDRESSES:
                    self._buckets.popitem(last=False)
        if short:
            raise TooManyNewSessions(address, self.per_minute,
                                     retry_after=max(1, math.ceil(short[0] / rate)))


def client_address(request: object) -> str | None:
    """The client's address a WSGI environ or an ASGI scope carries, or None."""
    if not isinstance(request, dict):
        return None
    address = request.get("REMOTE_ADDR")
    if isinstance(address, str) and address:
        return address
    client = request.get("client")
    if isinstance(client, (tuple, list)) and client and isinstance(client[0], str):
        return client[0]
    return None
