"""Which front door an application needs: WSGI (two arguments) or ASGI 3 (an ``async`` callable of three).

One answer for every place that must tell them apart: ``serve`` choosing
waitress or uvicorn, and the test kit choosing its client.
"""

from __future__ import annotations

import inspect
from typing import Any


def is_asgi(app: Any) -> bool:
    """Whether *app* is an ASGI 3 application: an ``async def`` taking (scope, receive, send).

    A coroutine function, or an object whose class's ``__call__`` is one
    (decorators unwrapped, static and class methods included).
    """
    if inspect.iscoroutinefunction(inspect.unwrap(app)):
        return accepts(app, 3)
    call = None if inspect.isroutine(app) else inspect.getattr_static(type(app), "__call__", None)
    if isinstance(call, staticmethod | classmethod):
        call = call.__func__
    if call is not None and inspect.iscoroutinefunction(inspect.unwrap(call)):
        return accepts(app, 3)
    return False


def accepts(app: Any, count: int) -> bool:
    """Whether *app* can be called with *count* positional arguments (True when unknowable)."""
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):  # builtins and some C callables have none
        return True
    try:
        signature.bind(*([None] * count))
    except TypeError:
        return False
    return True
