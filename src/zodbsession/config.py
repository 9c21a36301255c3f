"""The settings: one frozen ``Settings`` object, built and validated once at start-up.

This module owns the names, types, defaults and limits of every setting, and
the layering that fills them in, lowest precedence first: the defaults below,
a TOML file (``conf/zodbsession.toml``), environment variables
``ZODBSESSION_<SECTION>_<KEY>``, and an explicit overrides mapping (the CLI's
options, tests). Nothing reads settings per request: build ``Settings`` once
and pass it, or the objects its helpers make, to whatever needs them.

It is one module past 400 lines on purpose: the section classes are the
specification, and the parsing and the rules sit beside them so that adding a
key touches one file (and ``conf/zodbsession.toml``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import math
import os
import re
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn, Union, get_args, get_origin, get_type_hints

import zodburi
from ZODB import DB

from zodbsession.db import SESSIONS_DATABASE
from zodbsession.db import open_db as _open_db
from zodbsession.errors import ConfigError
from zodbsession.manager import SessionManager

#: The file ``load_settings()`` reads when given no path, relative to the current directory.
DEFAULT_PATH = Path("conf/zodbsession.toml")
#: Environment variables named ``ZODBSESSION_<SECTION>_<KEY>`` override the file.
ENV_PREFIX = "ZODBSESSION_"

SameSite = Literal["Lax", "Strict", "None"]
Secure = bool | Literal["auto"]


@dataclass(frozen=True)
class StorageSettings:
    """Where the data lives. Give ``pool_size`` at least ``server.threads``."""

    uri: str = "file://var/Data.fs"
    sessions_uri: str = ""  # "": sessions live in the main database
    pool_size: int = 8


@dataclass(frozen=True)
class SessionsSettings:
    """Session lifetimes (seconds) and size limits, as ``SessionManager`` applies them."""

    idle_timeout: float = 1800.0
    max_lifetime: float = 28800.0
    access_resolution: float = 60.0


@dataclass(frozen=True)
class CookieSettings:
    """The session cookie's attributes; ``secure="auto"`` means Secure over HTTPS."""

    name: str = "zodbsession"
    path: str = "/"
    domain: str = ""
    secure: Secure = "auto"
    httponly: bool = True
    samesite: SameSite = "Lax"
    persistent: bool = False


@dataclass(frozen=True)
class PublisherSettings:
    """How the WSGI publisher retries conflicts and hands out response bodies."""

    retry_attempts: int = 5
    retry_backoff: float = 0.01
    max_replay_bytes: int = 1048576
    streaming: bool = False
    serialize_same_session: bool = True


@dataclass(frozen=True)
class ServerSettings:
    """The bundled waitress server; ``app`` is ``"module:callable"`` or "" for the demo."""

    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 8
    app: str = ""


@dataclass(frozen=True)
class JanitorSettings:
    """The background expiry sweep; ``interval = 0`` turns it off."""

    interval: float = 60.0
    batch_size: int = 500


@dataclass(frozen=True)
class LoggingSettings:
    """Logging; ``level`` is a ``logging`` level name, stored upper-case."""

    level: str = "INFO"

    def __post_init__(self) -> None:
        if isinstance(self.level, str):
            object.__setattr__(self, "level", self.level.upper())


@dataclass(frozen=True)
class Settings:
    """Every setting, one frozen section per TOML table; compare equal by value.

    Build it with ``load_settings()`` or ``Settings.from_mapping()``, which
    check types; construction itself checks ranges and cross-field rules, so
    no invalid ``Settings`` exists. It is immutable and thread-safe.
    """

    storage: StorageSettings = field(default_factory=StorageSettings)
    sessions: SessionsSettings = field(default_factory=SessionsSettings)
    cookie: CookieSettings = field(default_factory=CookieSettings)
    publisher: PublisherSettings = field(default_factory=PublisherSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    janitor: JanitorSettings = field(default_factory=JanitorSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    # {"section.key" -> where its value came from}; absent means "default"
    _sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "mapping") -> Settings:
        """Settings from ``{section: {key: value}}`` or ``{"section.key": value}``."""
        return _build([(source, data, False)])

    def get(self, key: str) -> Any:
        """The value of a dotted key, e.g. ``settings.get("server.port")``."""
        section, _, name = key.partition(".")
        return getattr(getattr(self, section), name)

    def source_of(self, key: str) -> str:
        """Where a dotted key's value came from: a file, ``environment NAME``, ``default``..."""
        if key not in _TYPES:
            raise KeyError(key)
        return self._sources.get(key, "default")

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {key: value}}``, the shape of the TOML file (the token included)."""
        return {s.name: dataclasses.asdict(getattr(self, s.name)) for s in _SECTIONS}

    def session_manager(self, clock: Callable[[], float] = time.time) -> SessionManager:
        """A ``SessionManager`` with the [sessions] timeouts, on the right database."""
        return SessionManager(
            idle_timeout=self.sessions.idle_timeout,
            max_lifetime=self.sessions.max_lifetime,
            access_resolution=self.sessions.access_resolution,
            database=SESSIONS_DATABASE if self.storage.sessions_uri else None,
            clock=clock,
        )

    def open_db(self, *, read_only: bool = False, **db_options: Any) -> DB:
        """Open the [storage] database(s); extra keywords go to ``ZODB.DB``."""
        return _open_db(
            self.storage.uri,
            sessions_uri=self.storage.sessions_uri or None,
            pool_size=self.storage.pool_size,
            read_only=read_only,
            **db_options,
        )


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from defaults < file < environment < *overrides*.

    With *path* None, ``conf/zodbsession.toml`` is read if it exists; a path
    given explicitly must exist. *environ* defaults to ``os.environ``; every
    ``ZODBSESSION_*`` variable in it must name a setting, so a typo fails
    loudly instead of being ignored. *overrides* takes typed values, nested or
    dotted (``{"server.port": 9000}``). Raises ``ConfigError`` naming the key.
    """
    layers: list[tuple[str, Mapping[str, Any], bool]] = []
    if path is None and DEFAULT_PATH.is_file():
        path = DEFAULT_PATH
    if path is not None:
        layers.append((os.fspath(path), _read_toml(Path(path)), False))
    environ = os.environ if environ is None else environ
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX):
            section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
            layers.append((f"environment {name}", {f"{section}.{key}": environ[name]}, True))
    if overrides:
        layers.append(("override", overrides, False))
    return _build(layers)


# -- building -------------------------------------------------------------------

_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}  # fmt: skip


_SECTIONS = tuple(f for f in dataclasses.fields(Settings) if not f.name.startswith("_"))
# {"section.key" -> its type hint}, in declaration order
_TYPES: dict[str, Any] = {
    f"{s.name}.{name}": hint
    for s in _SECTIONS
    for name, hint in get_type_hints(s.default_factory).items()  # type: ignore[arg-type]
}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "no such configuration file") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read it: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None


def _flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``{"section.key": value}`` from nested or dotted keys, rejecting unknown ones."""
    flat: dict[str, Any] = {}
    sections = {k.partition(".")[0] for k in _TYPES}
    for name, value in data.items():
        if "." in name:
            flat[name] = value
        elif name not in sections:
            by_name = {k.partition(".")[2]: k for k in reversed(_TYPES)}  # first wins
            hint = _closest(name, sections) or _closest(name, by_name)
            raise ConfigError(name, f"unknown section{hint} {_got(value, source)}")
        elif not isinstance(value, Mapping):
            raise ConfigError(name, f"must be a table of settings ([{name}]) {_got(value, source)}")
        else:
            flat.update((f"{name}.{key}", v) for key, v in value.items())
    for key, value in flat.items():
        if key not in _TYPES:
            raise ConfigError(
                key, f"unknown setting{_closest(key, list(_TYPES))} {_got(value, source)}"
            )
    return flat


def _build(layers: list[tuple[str, Mapping[str, Any], bool]]) -> Settings:
    """Merge (source, data, is_text) layers, later ones winning, into a checked ``Settings``."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, data, is_text in layers:
        for key, value in _flatten(data, source).items():
            values[key] = _coerce(key, value, source, is_text and isinstance(value, str))
            sources[key] = source
    sections = {}
    for s in _SECTIONS:
        kwargs = {k.partition(".")[2]: v for k, v in values.items() if k.startswith(s.name + ".")}
        sections[s.name] = s.default_factory(**kwargs)  # type: ignore[misc]
    return Settings(**sections, _sources=MappingProxyType(sources))


def _coerce(key: str, value: Any, source: str, text: bool) -> Any:
    """*value* as the type *key* declares; with *text* (the environment's), parse it first.

    The file and overrides must give real types (a bool, not 1), because TOML
    and Python can say what they mean; only environment strings are parsed.
    """
    hint = _TYPES[key]
    args = get_args(hint) if get_origin(hint) is Union else (hint,)
    options = [o for a in args if get_origin(a) is Literal for o in get_args(a)]
    if options and value in options:
        return value
    if bool in args:
        if isinstance(value, bool):
            return value
        if text and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        wanted = "true or false" + "".join(f" or {o!r}" for o in options)
    elif options:
        wanted = "one of " + ", ".join(repr(o) for o in options)
    elif hint is str:
        if isinstance(value, str):
            return value
        wanted = "a string"
    else:
        number = value
        if text:
            with contextlib.suppress(ValueError):
                number = hint(value.strip())
        is_int = isinstance(number, int) and not isinstance(number, bool)
        if hint is int and is_int:
            return number
        if hint is float and (is_int or isinstance(number, float)) and math.isfinite(number):
            return float(number)
        wanted = "an integer" if hint is int else "a number"
    raise ConfigError(key, f"must be {wanted} {_got(value, source)}")


def _closest(name: str, candidates: Any) -> str:
    """A "did you mean" for the closest candidate (a mapping shows its value), or ""."""
    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    if not match:
        return ""
    shown = candidates[match[0]] if isinstance(candidates, Mapping) else match[0]
    return f"; did you mean {shown!r}?"


def _got(value: Any, source: str) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"(got {shown})" if source == "default" else f"(got {shown} from {source})"


# -- validating -------------------------------------------------------------------

_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_APP_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_POSITIVE = "must be greater than 0"


def _validate(s: Settings) -> None:
    """Check ranges and the rules between settings; raise on the first failure."""
    ss, ck, srv = s.sessions, s.cookie, s.server
    rules: list[tuple[str, bool, str]] = [
        ("storage.pool_size", s.storage.pool_size >= 1, "must be at least 1"),
        ("sessions.idle_timeout", ss.idle_timeout > 0, _POSITIVE + " seconds"),
        ("sessions.max_lifetime", ss.max_lifetime > 0, _POSITIVE + " seconds"),
        ("sessions.max_lifetime", ss.max_lifetime >= ss.idle_timeout,
         f"must be at least sessions.idle_timeout ({ss.idle_timeout:g})"),
        ("sessions.access_resolution", 0 <= ss.access_resolution < ss.idle_timeout,
         f"must be at least 0 and below sessions.idle_timeout ({ss.idle_timeout:g})"),
        ("cookie.name", bool(_COOKIE_NAME.fullmatch(ck.name)),
         "must be a non-empty cookie token (letters, digits, !#$%&'*+-.^_`|~)"),
        ("cookie.path", ck.path.startswith("/") and not re.search(r"[;\s]", ck.path),
         "must start with '/' and hold no ';' or whitespace"),
        ("cookie.domain", not re.search(r"[;\s]", ck.domain), "must hold no ';' or whitespace"),
        ("cookie.samesite", ck.samesite != "None" or ck.secure is True,
         "'None' needs cookie.secure = true, or browsers drop the cookie"),
        ("publisher.retry_attempts", s.publisher.retry_attempts >= 1, "must be at least 1"),
        ("publisher.retry_backoff", s.publisher.retry_backoff >= 0, "must be at least 0 seconds"),
        ("publisher.max_replay_bytes", s.publisher.max_replay_bytes >= 0, "must be at least 0"),
        ("server.host", bool(srv.host), "must not be empty"),
        ("server.port", 0 <= srv.port <= 65535, "must be from 0 (any free port) to 65535"),
        ("server.threads", srv.threads >= 1, "must be at least 1"),
        ("server.app", not srv.app or bool(_APP_SPEC.fullmatch(srv.app)),
         "must be 'module:callable' (e.g. 'myapp.wsgi:application') or empty for the demo"),
        ("janitor.interval", s.janitor.interval >= 0, "must be at least 0 seconds (0: off)"),
        ("janitor.batch_size", s.janitor.batch_size >= 1, "must be at least 1"),
        ("logging.level", s.logging.level in logging.getLevelNamesMapping(),
         "must be a logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ]  # fmt: skip
    for key, ok, problem in rules:
        if not ok:
            _fail(s, key, problem)
    _check_uri(s, "storage.uri", allow_empty=False)
    _check_uri(s, "storage.sessions_uri", allow_empty=True)
    if s.storage.sessions_uri == s.storage.uri:
        _fail(s, "storage.sessions_uri", "must differ from storage.uri (or be empty)")


def _check_uri(s: Settings, key: str, *, allow_empty: bool) -> None:
    """Resolve a storage URI without opening it, so a typo fails at start-up."""
    uri = s.get(key)
    if allow_empty and uri == "":
        return
    if "://" not in uri:
        _fail(s, key, "must be a storage URI such as file://var/Data.fs or memory://")
    try:
        zodburi.resolve_uri(uri)
    except zodburi.NoResolverForScheme:
        scheme = uri.partition(":")[0]
        _fail(s, key, f"unknown storage scheme {scheme!r} (file, memory, zeo, zconfig, demo...)")
    except Exception as exc:  # resolvers raise what they like: KeyError, ZConfig's errors...
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        _fail(s, key, f"cannot be resolved: {reason}".replace("\n", " "))


def _fail(s: Settings, key: str, problem: str) -> NoReturn:
    raise ConfigError(key, f"{problem} {_got(s.get(key), s.source_of(key))}")
