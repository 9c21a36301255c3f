"""Reading the session cookie from a request and writing ``Set-Cookie``.

The parser is ours on purpose: it does one ``split`` of the header and one
``partition`` per pair, so it is linear in the header's length whatever a
client sends (the standard library's ``SimpleCookie`` has had slow-parsing
bugs on hostile input, CVE-2024-7592), and it never raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Cookie headers longer than this are ignored whole: no browser sends one.
MAX_COOKIE_HEADER = 16 * 1024

SameSite = Literal["Lax", "Strict", "None"]


def read_cookie(header: str | None, name: str) -> str | None:
    """The value of the first cookie called *name* in a ``Cookie`` header, or None."""
    if not header or len(header) > MAX_COOKIE_HEADER:
        return None
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


@dataclass(frozen=True)
class CookiePolicy:
    """How the session cookie is named and flagged.

    ``secure="auto"`` sets the Secure flag when the request came over HTTPS.
    ``max_age`` None makes a browser-session cookie, gone when the browser
    closes; a number makes it outlive the browser for that many seconds.
    """

    name: str = "zodbsession"
    path: str = "/"
    domain: str | None = None
    secure: bool | Literal["auto"] = "auto"
    httponly: bool = True
    samesite: SameSite | None = "Lax"
    max_age: int | None = None

    def set_header(self, session_id: str, *, https: bool,
                   max_age: int | Literal["session"] | None = None) -> tuple[str, str]:
        """The ``Set-Cookie`` header that hands *session_id* to the client.

        *max_age* is what this one session asks for (``RequestSession.cookie_max_age``):
        None for the policy's own ``max_age``, ``"session"`` for a cookie
        without ``Max-Age`` (gone when the browser closes), or a positive
        number of seconds. Zero or less would delete the cookie being handed
        out, so it is refused.
        """
        if max_age is None:
            max_age = self.max_age
        elif max_age == "session":
            max_age = None
        elif isinstance(max_age, bool) or not isinstance(max_age, int | float) or not max_age >= 1:
            raise ValueError(f"max_age must be None, 'session' or a positive number of seconds, "
                             f"not {max_age!r}")
        parts = [f"{self.name}={session_id}"]
        if max_age is not None:
            parts.append(f"Max-Age={int(max_age)}")
        return ("Set-Cookie", "; ".join(parts + self._attributes(https)))

    def delete_header(self, *, https: bool) -> tuple[str, str]:
        """The ``Set-Cookie`` header that makes the client forget the cookie."""
        parts = [f"{self.name}=", "Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
        return ("Set-Cookie", "; ".join(parts + self._attributes(https)))

    def _attributes(self, https: bool) -> list[str]:
        attributes = [f"Path={self.path}"]
        if self.domain:
            attributes.append(f"Domain={self.domain}")
        if self.secure is True or (self.secure == "auto" and https):
            attributes.append("Secure")
        if self.httponly:
            attributes.append("HttpOnly")
        if self.samesite:
            attributes.append(f"SameSite={self.samesite}")
        return attributes
