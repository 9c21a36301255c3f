"""Reading the session cookie from a request and writing ``Set-Cookie``.

The parser is ours on purpose: it does one ``replace`` and one ``split`` of
the header and one ``partition`` per pair, so it is linear in the header's
length whatever a client sends (the standard library's ``SimpleCookie`` has
had slow-parsing bugs on hostile input, CVE-2024-7592), and it never raises.

A request may carry one cookie name several times (two cookies of one name
set for different paths or domains) and several ``Cookie`` headers, which a
WSGI server hands over joined by ``", "`` (waitress) or ``"; "``. Pairs are
therefore split at ``;`` and at ``,`` alike: neither can occur in a value we
issue, and RFC 6265 allows neither in a cookie value. ``session_cookie_ids``
gives every well-formed session id in order, so that a stale or malformed
first cookie does not hide a valid later one.

``CookiePolicy`` refuses, when it is made, any setting that would give a
cookie the browser drops or mangles.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from zodbsession.core.errors import ConfigError
from zodbsession.core.session import is_well_formed_id

#: Cookie headers longer than this are ignored whole: no browser sends one.
MAX_COOKIE_HEADER = 16 * 1024

#: At most this many session ids of one request's cookies are looked up.
MAX_SESSION_COOKIES = 4

SameSite = Literal["Lax", "Strict", "None"]

CookieHeader = str | bytes | Iterable[str | bytes] | None

#: A session's own ``Max-Age``: whole seconds, ``"session"`` for none (gone
#: when the browser closes), None for the policy's default.
MaxAge = int | Literal["session"] | None

# RFC 6265's cookie-name is RFC 2616's token: no CTLs, no separators.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# What would end an attribute or the header early, in a path or domain.
_BREAKS_HEADER = re.compile(r"[;,\s\x00-\x1f\x7f]")


def _one_header(header: CookieHeader) -> str:
    """Several ``Cookie`` headers (or bytes, as ASGI gives them) as one string."""
    if header is None:
        return ""
    if isinstance(header, bytes):
        return header.decode("latin-1")
    if isinstance(header, str):
        return header
    return "; ".join(part.decode("latin-1") if isinstance(part, bytes) else str(part)
                     for part in header)


def read_cookies(header: CookieHeader, name: str) -> list[str]:
    """Every value of the cookies called *name*, in the order the request gives them.

    *header* is a ``Cookie`` header, several of them in a list, or None.
    Surrounding double quotes are removed from a value. A header past
    ``MAX_COOKIE_HEADER`` (all of them together) is ignored whole.
    """
    if header.__class__ is not str:  # (a WSGI server's one string needs no joining)
        header = _one_header(header)
    if not header or len(header) > MAX_COOKIE_HEADER:
        return []
    values = []
    for pair in header.replace(",", ";").split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


def read_cookie(header: CookieHeader, name: str) -> str | None:
    """The value of the first cookie called *name*, or None (see ``read_cookies``)."""
    values = read_cookies(header, name)
    return values[0] if values else None


def session_cookie_ids(header: CookieHeader, name: str) -> list[str]:
    """The well-formed session ids among the cookies called *name*, first first, each once.

    At most ``MAX_SESSION_COOKIES``: a client cannot make a request look up
    more. The front door looks them up in order and takes the first that
    names a live session (``RequestSession(..., more_ids=...)``).
    """
    ids: list[str] = []
    for value in read_cookies(header, name):
        if is_well_formed_id(value) and value not in ids:
            ids.append(value)
            if len(ids) == MAX_SESSION_COOKIES:
                break
    return ids


@dataclass(frozen=True)
class CookiePolicy:
    """How the session cookie is named and flagged.

    ``secure="auto"`` sets the Secure flag when the request came over HTTPS.
    ``max_age`` None makes a browser-session cookie, gone when the browser
    closes; a number makes it outlive the browser for that many seconds.
    ``partitioned`` adds ``Partitioned`` (CHIPS: a third-party cookie kept
    per top-level site); ``samesite`` None sends no ``SameSite`` attribute.

    Made only valid: the name must be an RFC 6265 token; ``SameSite=None``
    needs ``secure=True``; a ``__Secure-`` name needs ``secure=True``, and a
    ``__Host-`` name ``secure=True``, ``path="/"`` and no domain (browsers
    silently drop such cookies otherwise), and so does ``partitioned``; a path starts with ``/``; neither
    path nor domain holds ``;``, ``,``, whitespace or control characters.
    Anything else raises ``ConfigError`` naming the attribute.
    """

    name: str = "zodbsession"
    path: str = "/"
    domain: str | None = None
    secure: bool | Literal["auto"] = "auto"
    httponly: bool = True
    samesite: SameSite | None = "Lax"
    max_age: int | None = None
    partitioned: bool = False

    def __post_init__(self) -> None:
        for problem in self._problems():
            raise ConfigError(*problem)

    def _problems(self) -> Iterable[tuple[str, str]]:
        name = self.name
        if not isinstance(name, str) or not _TOKEN.match(name):
            yield "name", (f"must be a cookie token (letters, digits, !#$%&'*+-.^_`|~), not {name!r}")
        if self.secure not in (True, False, "auto"):
            yield "secure", f"must be true, false or 'auto', not {self.secure!r}"
        if self.samesite not in ("Lax", "Strict", "None", None):
            yield "samesite", f"must be 'Lax', 'Strict', 'None' or None, not {self.samesite!r}"
        path = self.path
        if not isinstance(path, str) or not path.startswith("/") or _BREAKS_HEADER.search(path):
            yield "path", f"must start with '/' and hold no ';', ',', whitespace or control, not {path!r}"
        if self.domain is not None and (not isinstance(self.domain, str) or not self.domain
                                        or _BREAKS_HEADER.search(self.domain)):
            yield "domain", f"must be None or a host name, not {self.domain!r}"
        if self.max_age is not None and (isinstance(self.max_age, bool)
                                         or not isinstance(self.max_age, int) or self.max_age < 1):
            yield "max_age", f"must be None or a positive whole number of seconds, not {self.max_age!r}"
        if self.samesite == "None" and self.secure is not True:
            yield "samesite", "'None' needs secure=True: browsers drop a SameSite=None cookie without Secure"
        if not isinstance(self.partitioned, bool):
            yield "partitioned", f"must be true or false, not {self.partitioned!r}"
        elif self.partitioned and self.secure is not True:
            yield "partitioned", "needs secure=True: browsers drop a Partitioned cookie without Secure"
        lowered = name.lower() if isinstance(name, str) else ""
        if lowered.startswith("__secure-") and self.secure is not True:
            yield "secure", f"a {name!r} cookie needs secure=True, or browsers drop it"
        if lowered.startswith("__host-") and (self.secure is not True or self.path != "/" or self.domain):
            yield "name", (f"a {name!r} cookie needs secure=True, path='/' and no domain, "
                           "or browsers drop it")

    def set_header(self, session_id: str, *, https: bool,
                   max_age: MaxAge = None) -> tuple[str, str]:
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
        if self.partitioned:
            attributes.append("Partitioned")
        return attributes
