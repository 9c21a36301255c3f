"""What a response built from a session carries: the one place that decides it.

Every front door and adapter (the WSGI publisher, the ASGI middleware, Flask,
Pyramid, Quixote) describes what happened to the session in its request as a
``SessionUse`` and takes the response's headers from ``session_headers``:

- ``Set-Cookie`` when the session's cookie must change: a new id (a new
  session, a login, a renewed expiry) or its deletion (a logout);
- ``Vary: Cookie`` whenever the request read or changed the session, or sends
  its cookie, as Django and Flask do: a cache that stores such a response must
  key it by the cookie, so no user is served another's page;
- ``Cache-Control: private`` whenever ``Set-Cookie`` is sent (OWASP's rule that
  a response carrying a session id is never stored by a shared cache), merged
  with what the application set and never weakening it: ``public`` goes,
  ``no-store`` or ``private`` already there stay as they are.

A response that never touched the session gets none of these, so static pages
stay cacheable. The rules are RFC 9110's (``Vary`` is a list of field names,
``*`` already varies on everything) and RFC 9111's (``private`` keeps a response
out of shared caches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from zodbsession.core.attempt import SessionUse
from zodbsession.web.cookies import CookiePolicy

Headers = list[tuple[str, str]]


def session_headers(headers: Iterable[tuple[str, str]], cookie: CookiePolicy, use: SessionUse, *,
                    https: bool, set_cookie: tuple[str, str] | None = None) -> Headers:
    """*headers* (the application's) with what *use* asks for: the headers the response goes out with.

    The application's own headers keep their order; ``Vary`` and
    ``Cache-Control`` are merged into the application's first line of each
    (or added), ``Set-Cookie`` is appended: *cookie*'s, or *set_cookie* when
    an adapter formats its own (Flask's carries ``Expires`` too).
    """
    result = list(headers)
    sends_cookie = use.cookie is not None and use.cookie is not True
    if not (use.used or sends_cookie):
        return result
    for name, _value in result:
        if name.lower() == "vary":
            _merge(result, "Vary", _vary_on_cookie)
            break
    else:  # no Vary yet (most responses): the merge would only append this
        result.append(("Vary", "Cookie"))
    if sends_cookie:
        _merge(result, "Cache-Control", _private)
        result.append(set_cookie if set_cookie is not None else _set_cookie(cookie, use, https))
    return result


def _set_cookie(cookie: CookiePolicy, use: SessionUse, https: bool) -> tuple[str, str]:
    if isinstance(use.cookie, str):
        return cookie.set_header(use.cookie, https=https, max_age=use.max_age)
    return cookie.delete_header(https=https)


def _merge(headers: Headers, name: str, merge: Callable[[list[str]], str | None]) -> None:
    """Replace the values of *name* in *headers* by ``merge(values)`` in one line, at the first's place."""
    lowered = name.lower()
    places = [i for i, (key, _value) in enumerate(headers) if key.lower() == lowered]
    value = merge([headers[i][1] for i in places])
    if value is None:
        return
    if places:
        headers[places[0]] = (headers[places[0]][0], value)
        for i in reversed(places[1:]):
            del headers[i]
    else:
        headers.append((name, value))


def _items(values: list[str]) -> list[str]:
    """The comma-separated members of a list-valued field's lines (RFC 9110 section 5.6.1)."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _vary_on_cookie(values: list[str]) -> str | None:
    items = _items(values)
    if any(item == "*" or item.lower() == "cookie" for item in items):
        return None if len(values) <= 1 else ", ".join(items)
    return ", ".join([*items, "Cookie"])


def _private(values: list[str]) -> str | None:
    """The application's Cache-Control, kept out of shared caches.

    ``no-store`` and an unqualified ``private`` already do it. Otherwise
    ``public`` (which would let a shared cache store the response) goes, and
    ``private`` is added; every other directive (``max-age``, ``no-cache``,
    ``must-revalidate``, ...) is kept, since it only restricts the browser's cache.
    ``private="Set-Cookie"`` is not enough (it leaves the body shareable), so
    it becomes a plain ``private``.
    """
    items = _items(values)
    names = [item.split("=", 1)[0].strip().lower() for item in items]
    if "no-store" in names or any(item.lower() == "private" for item in items):
        return None if len(values) <= 1 else ", ".join(items)
    kept = [item for item, name in zip(items, names, strict=True)
            if name not in ("public", "private", "s-maxage")]
    return ", ".join(["private", *kept])
