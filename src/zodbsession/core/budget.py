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
proxy's. The budget is per process: with N app servers behind a balancer an
address gets up to N times as much. Threading: one lock, held for a dict
update; at most ``MAX_ADDRESSES`` addresses are remembered (the least recently
seen are forgotten, which only ever gives an address its full budget back).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from zodbsession.core.errors import TooManyNewSessions

#: Addresses remembered at once; beyond it the least recently seen is forgotten.
MAX_ADDRESSES = 65536


class AddressBudget:
    """``per_minute`` new sessions and logins per client address; ``charge`` spends one."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)

    def charge(self, address: str | None) -> None:
        """Spend one of *address*'s budget, or raise ``TooManyNewSessions``; None is never charged."""
        if address is None or self.per_minute <= 0:
            return
        rate = self.per_minute / 60.0
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(address, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * rate)
            if tokens < 1.0:
                self._buckets[address] = (tokens, now)
                raise TooManyNewSessions(address, self.per_minute,
                                         retry_after=max(1, math.ceil((1.0 - tokens) / rate)))
            self._buckets[address] = (tokens - 1.0, now)
            while len(self._buckets) > MAX_ADDRESSES:
                self._buckets.popitem(last=False)


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
