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
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from zodbsession.cookies import read_cookie
from zodbsession.errors import ConfigError

#: The name of the cookie the login form sets.
ADMIN_COOKIE = "zodbsession_admin"

#: The credential of a request authorized by the Bearer header rather than the cookie.
BEARER = "bearer"

_CLOCK_SKEW = 60.0


class AdminAccess:
    """Checks tokens, issues and checks login cookies, makes and checks CSRF tokens.

    Threading: immutable after construction; any thread may call anything.
    """

    def __init__(self, token: str, *, lifetime: float = 12 * 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ConfigError(
                "admin.token", "is empty, and the admin listener does not run without one: set "
                "admin.token in the config or ZODBSESSION_ADMIN_TOKEN in the environment "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        self.lifetime = lifetime
        self.clock = clock
        self._token_digest = hashlib.sha256(token.encode()).digest()
        self._key = secrets.token_bytes(32)

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
