"""The ASGI front door: ``SessionMiddleware`` and ``run_in_connection``.

``SessionMiddleware`` runs each HTTP request of an ASGI 3 application
(Starlette, FastAPI, Quart, ...) in a ZODB transaction, as ``SessionPublisher``
does for WSGI. ``run_in_connection`` is how async code reaches the request's
own ZODB objects without blocking the event loop. See ``docs/asgi.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from zodbsession.core.registry import SessionRegistry
from zodbsession.core.registry import registry as default_registry
from zodbsession.web.asgi.middleware import RUNNER_KEY, SessionMiddleware

__all__ = ["SessionMiddleware", "run_in_connection"]

T = TypeVar("T")


async def run_in_connection(fn: Callable[..., T], /, *args: Any,
                            registry: SessionRegistry = default_registry) -> T:
    """Call ``fn(connection, *args)`` in a worker thread with the current request's connection.

    For an async application's own ZODB objects: whatever *fn* loads (a
    ``root()`` lookup, a BTree search) blocks that thread, not the event
    loop, and *fn*'s changes are part of the request's transaction. Objects
    already loaded may be read and changed in the loop directly; *fn* may
    return them (a persistent object it returns is loaded, in that thread,
    before it comes back; its subobjects are not). Await each call before the next (calls on one request run
    one at a time, never two threads on one connection), and do not touch
    the request's persistent objects in the loop while a call runs.
    ``current_session`` and ``current_connection`` work inside *fn*.

    Raises ``NoActiveRequest`` outside a request of ``SessionMiddleware``.
    """
    runner = registry().environ.get(RUNNER_KEY)
    if runner is None:
        raise RuntimeError("run_in_connection needs a request of zodbsession.web.asgi.SessionMiddleware "
                           "(under the WSGI publisher, use the connection directly)")
    result: T = await runner(fn, *args)
    return result
