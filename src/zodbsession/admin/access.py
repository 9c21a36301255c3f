"""Who may use the admin listener: the token, the login cookie and the CSRF check.

The token comes from the config and is compared in constant time. A browser
logs in once with a form and then carries a cookie that never holds the
token: the time of login and an HMAC of it and of the token's hash, under a
key drawn at random when the process starts, so a cookie stops working after
a restart or ``lifetime`` seconds and reveals nothing if it leaks. It is
HttpOnly and SameSite=Strict. The POSTs a cookie authorizes must also carry a
CSRF token derived from that cookie in a form field, and, when the browser
sends them, an ``Origin`` of this very host and a same-origin
``Sec-Fetch-Site``: SameSite alone leaves sibling subdomains and old browsers
in. A Bearer header needs no CSRF token, as browsers never attach one to a
forged cross-site request.

Cookies are not scoped by port: the browser also sends this cookie to the
application's listener on the same host, which sees it but can use it nowhere
but here.

Guessing is rate-limited per client address (``FailureLimiter``): a client
past its allowance of wrong tokens gets 429 with an honest ``Retry-After``
before its token is even looked at, and failures are logged in aggregate, one
line a minute at most, rather than one line each.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from zodbsession.core.errors import ConfigError
from zodbsession.web.cookies import read_cookie

#: The name of the cookie the login form sets.
ADMIN_COOKIE = "zodbsession_admin"

#: The credential of a request authorized by the Bearer header rather than the cookie.
BEARER = "bearer"

_CLOCK_SKEW = 60.0

log = logging.getLogger("zodbsession.admin")


class FailureLimiter:
    """Wrong tokens allowed per client address: a bucket of *burst* that refills at *per_second*.

    ``retry_after(client)`` is 0 while the client may try, else the whole
    seconds until its next try; ``failed(client)`` spends one try. At most
    *max_clients* addresses are remembered (the least recently failing go
    first), so a flood from many addresses costs bounded memory. Failures are
    logged as one WARNING per *log_interval* seconds at most, with their count.

    Threading: one lock guards the buckets and the counts; any thread may call.
    """

    def __init__(self, *, burst: int = 10, per_second: float = 0.2, max_clients: int = 10_000,
                 log_interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or per_second <= 0:
            raise ValueError(f"burst must be at least 1 and per_second above 0, not {burst}, {per_second}")
        self.burst = burst
        self.per_second = per_second
        self.max_clients = max_clients
        self.log_interval = log_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # {client -> (tries, at)}
        self._failures = 0
        self._refused = 0
        self._clients: set[str] = set()
        self._since = clock()

    def _tries(self, client: str, now: float) -> float:
        tries, at = self._buckets.get(client, (float(self.burst), now))
        return min(float(self.burst), tries + (now - at) * self.per_second)

    def retry_after(self, client: str) -> int:
        """0 if *client* may try a token now, else the seconds until it may (counted as refused)."""
        with self._lock:
            now = self.clock()
            tries = self._tries(client, now)
            if tries >= 1:
                return 0
            self._refused += 1
            self._log_if_due(now)
            return max(1, math.ceil((1 - tries) / self.per_second))

    def failed(self, client: str) -> None:
        """Spend one of *client*'s tries: it sent a wrong token."""
        with self._lock:
            now = self.clock()
            self._buckets[client] = (max(0.0, self._tries(client, now) - 1), now)
            self._buckets.move_to_end(client)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            self._failures += 1
            if len(self._clients) < self.max_clients:
                self._clients.add(client)
            self._log_if_due(now)

    def _log_if_due(self, now: float) -> None:
        if now - self._since < self.log_interval or not (self._failures or self._refused):
            return
        log.warning("admin: %d wrong token(s) from %d client(s) in the last %.0f s; %d request(s) "
                    "refused with 429 for guessing", self._failures, len(self._clients),
                    now - self._since, self._refused)
        self._failures = self._refused = 0
        self._clients.clear()
        self._since = now


class AdminAccess:
    """Checks tokens, issues and checks login cookies, makes and checks CSRF tokens.

    Threading: immutable after construction but for the limiter, which
    locks; any thread may call anything.
    """

    def __init__(self, token: str, *, lifetime: float = 12 * 3600.0,
                 clock: Callable[[], float] = time.time,
                 limiter: FailureLimiter | None = None) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ConfigError(
                "admin.token", "is empty, and the admin listener does not run without one: set "
                "admin.token in the config or ZODBSESSION_ADMIN_TOKEN in the environment "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        self.lifetime = lifetime
        self.clock = clock
        self._token_digest = hashlib.sha256(token.encode()).digest()
        self._key = secrets.token_bytes(32)
        self.limiter = limiter if limiter is not None else FailureLimiter()

    @staticmethod
    def sends_bearer(environ: Mapping[str, Any]) -> bool:
        """Whether the request offers a Bearer token (which may be wrong)."""
        return str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")[0].lower() == "bearer"

    def is_token(self, given: str) -> bool:
        """Whether *given* is the admin token (constant time, length included)."""
        digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(digest, self._token_digest)

    def credential(self, environ: Mapping[str, Any]) -> str | None:
        """``BEARER``, the valid login cookie's value, or None: not authorized.

        A request that sends a Bearer header is judged by it alone.
        """
        scheme, _, given = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() == "bearer":
            return BEARER if self.is_token(given.strip()) else None
        cookie = read_cookie(environ.get("HTTP_COOKIE"), ADMIN_COOKIE)
        return cookie if cookie is not None and self._cookie_is_valid(cookie) else None

    def login_cookie(self, *, https: bool) -> str:
        """The ``Set-Cookie`` value that logs a browser in."""
        secure = "; Secure" if https else ""
        return (f"{ADMIN_COOKIE}={self._cookie_value(int(self.clock()))}; Path=/; HttpOnly; "
                f"SameSite=Strict; Max-Age={int(self.lifetime)}{secure}")

    @staticmethod
    def logout_cookie() -> str:
        """The ``Set-Cookie`` value that deletes the login cookie."""
        return f"{ADMIN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"

    def csrf_token(self, credential: str) -> str:
        """The form token that goes with *credential* (a cookie's value)."""
        return hmac.new(self._key, b"csrf|" + credential.encode(), hashlib.sha256).hexdigest()

    def post_allowed(self, environ: Mapping[str, Any], credential: str, form_token: str) -> bool:
        """Whether a POST authorized by *credential* may change anything (see the module docstring)."""
        if credential == BEARER:
            return True
        origin = environ.get("HTTP_ORIGIN")
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        if origin is not None and origin != own:
            return False
        if environ.get("HTTP_SEC_FETCH_SITE", "same-origin") not in ("same-origin", "none"):
            return False
        return hmac.compare_digest(form_token.encode("utf-8", "surrogatepass"),
                                   self.csrf_token(credential).encode())

    def _cookie_value(self, issued: int) -> str:
        mac = hmac.new(self._key, f"{issued}|".encode() + self._token_digest, hashlib.sha256)
        return f"{issued}.{mac.hexdigest()}"

    def _cookie_is_valid(self, value: str) -> bool:
        issued, _, _ = value.partition(".")
        if not issued.isdigit() or len(issued) > 12:
            return False
        age = self.clock() - int(issued)
        if not -_CLOCK_SKEW < age < self.lifetime:
            return False
        return hmac.compare_digest(self._cookie_value(int(issued)).encode(),
                                   value.encode("utf-8", "surrogatepass"))
