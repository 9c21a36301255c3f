"""Finding the application ``serve`` runs: ``module:name``, ``module:factory()``, WSGI or ASGI.

As gunicorn and uvicorn do, the current directory is importable, so
``zodbsession serve --app myapp:app`` works from the project's directory
without ``PYTHONPATH=.``. A spec ending in ``()`` calls a factory with no
arguments; nothing else is called, and a plain ``module:name`` naming a
factory (a callable that cannot take a WSGI or ASGI call) is refused with the
fix spelt out. Whether the application speaks WSGI or ASGI is read from its
signature: an ``async def`` (a coroutine function, or an object whose
``__call__`` is one) taking ``(scope, receive, send)`` is ASGI, anything else
WSGI; ``--asgi`` forces ASGI for the applications that hide it.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Literal

from zodbsession.core.errors import ConfigError
from zodbsession.web.interface import accepts, is_asgi

#: Which front door an application needs: the WSGI publisher or the ASGI middleware.
Interface = Literal["wsgi", "asgi"]



@dataclass(frozen=True)
class LoadedApp:
    """An application ready to wrap: the callable, the interface it speaks, and its spec."""

    app: Any
    interface: Interface
    spec: str


def importable_cwd() -> None:
    """Put the current directory first on ``sys.path``, as gunicorn does (once)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def resolve(spec: str, key: str = "server.app") -> Any:
    """Import ``module:attribute`` (dots after the colon walk attributes), calling a trailing ``()``.

    *key* names the setting in errors, which are ``ConfigError``.
    """
    importable_cwd()
    call = spec.endswith("()")
    module_name, sep, attribute = spec.removesuffix("()").partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(key, f"must look like module:callable or module:factory() (got {spec!r})")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(key, f"cannot import {module_name!r}: {exc} (the current directory "
                          f"{os.getcwd()} is importable)") from None
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ConfigError(key, f"{module_name!r} has no attribute {attribute!r}") from None
    if call:
        if not callable(target):
            raise ConfigError(key, f"{spec!r}: {attribute!r} is not callable, so it is no factory")
        try:
            target = target()
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(key, f"the factory {spec!r} failed: {type(exc).__name__}: {exc}") from None
    if not callable(target):
        raise ConfigError(key, f"{spec!r} is not callable")
    return target


def load_app(spec: str, *, key: str = "server.app", asgi: bool = False) -> LoadedApp:
    """The application *spec* names, with its interface (*asgi* forces ASGI).

    Raises ``ConfigError`` naming *key* when it cannot be imported, when a
    factory fails, or when the object is a factory left uncalled.
    """
    app = resolve(spec, key)
    if asgi or is_asgi(app):
        return LoadedApp(app, "asgi", spec)
    if not accepts(app, 2):
        raise ConfigError(key, f"{spec!r} cannot be called as a WSGI app (environ, start_response) "
                          f"nor as an ASGI app (scope, receive, send); if it is a factory that "
                          f"returns the app, write {spec.removesuffix('()')}() to call it")
    return LoadedApp(app, "wsgi", spec)
