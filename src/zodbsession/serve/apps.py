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

import contextlib
import dataclasses
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Literal

from zodbsession.config import Settings
from zodbsession.core.db import redact_uri
from zodbsession.core.errors import ConfigError
from zodbsession.web.interface import accepts, is_asgi

log = logging.getLogger(__name__)

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
    _refuse_wrapped(app, spec, key)
    if asgi or is_asgi(app):
        return LoadedApp(app, "asgi", spec)
    if not accepts(app, 2):
        raise ConfigError(key, f"{spec!r} cannot be called as a WSGI app (environ, start_response) "
                          f"nor as an ASGI app (scope, receive, send); if it is a factory that "
                          f"returns the app, write {spec.removesuffix('()')}() to call it")
    return LoadedApp(app, "wsgi", spec)


def adopt_app_settings(settings: Settings, app: Any) -> Settings:
    """*settings* with what an application's own session settings replace, said in one log line.

    A Flask app with ``zodbsession.flask`` (and likewise a Quixote app from
    ``zodbsession.quixote.make_app``) keeps its database
    (``ZODBSESSION_URI``), cookie (``SESSION_COOKIE_*``) and timeouts in its
    configuration; under another server its own publisher uses them, so
    ``serve`` uses them too: the same cookie name and the same database under
    any server, and moving between servers logs nobody out. The extension
    says what it needs through ``server_settings()``; nothing is imported.
    """
    extensions = getattr(app, "extensions", None)
    state = extensions.get("zodbsession") if isinstance(extensions, dict) else None
    wanted = getattr(state, "server_settings", None)  # Flask's extension
    kind = "Flask"
    if not callable(wanted):
        wanted, kind = getattr(app, "server_settings", None), "Quixote"  # zodbsession.quixote's app
    if not callable(wanted):
        return settings
    changes: dict[str, dict[str, Any]] = {}
    said: list[str] = []
    for key, (value, source) in wanted().items():
        section, _, field = key.partition(".")
        current = getattr(getattr(settings, section), field)
        if current == value:
            continue
        changes.setdefault(section, {})[field] = value
        if key == "storage.sessions_uri" and not current:
            continue
        shown, was = (redact_uri(value) if key.startswith("storage.") and value else value,
                      redact_uri(current) if key.startswith("storage.") and current else current)
        said.append(f"{source} {shown!r} over {key} {was!r}")
    if not changes:
        return settings
    log.info("the %s app's own settings win over zodbsession's, so that it has one cookie and one "
             "database under any server: %s", kind, "; ".join(said))
    return dataclasses.replace(settings, **{
        section: dataclasses.replace(getattr(settings, section), **fields)
        for section, fields in changes.items()})


def _refuse_wrapped(app: Any, spec: str, key: str) -> None:
    """Refuse, in one line, an application already inside a publisher or middleware of its own.

    ``serve`` opens the database of its settings and wraps the application
    itself; an application that brings its own ``SessionPublisher`` (the
    README's ``make_application()``) has already opened its database, so the
    server's own opening then failed with "var/Data.fs is in use by another
    process", naming no culprit. Its database is closed before the error.
    """
    from zodbsession.web.asgi import SessionMiddleware
    from zodbsession.web.wsgi.publisher import SessionPublisher

    if not isinstance(app, SessionPublisher | SessionMiddleware):
        return
    with contextlib.suppress(Exception):
        app.db.close()
    module, _, name = spec.removesuffix("()").partition(":")
    other = (f"waitress-serve --call {module}:{name}" if isinstance(app, SessionPublisher)
             else f"uvicorn --factory {module}:{name}")
    raise ConfigError(key, f"{spec!r} is already a {type(app).__name__} with a database of its own; "
                      f"serve opens the database of its settings and wraps the application itself: "
                      f"give it the bare application (--app {module}:app, or a factory that returns "
                      f"the app unwrapped), or serve this one with another server ({other})")
