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

from ZODB import DB

from zodbsession.core.db import SESSIONS_DATABASE, is_embedded, redact_uri, resolve
from zodbsession.core.db import open_db as _open_db
from zodbsession.core.errors import ConfigError
from zodbsession.core.groupcommit import FsyncPolicy
from zodbsession.core.manager import SessionManager
from zodbsession.core.unsaved import UnsavedPolicy
from zodbsession.web.cookies import CookiePolicy
from zodbsession.web.options import FrontDoorOptions

#: The file ``load_settings()`` reads when given no path, relative to the current directory.
DEFAULT_PATH = Path("conf/zodbsession.toml")
#: Environment variables named ``ZODBSESSION_<SECTION>_<KEY>`` override the file.
ENV_PREFIX = "ZODBSESSION_"
#: The shortest admin token accepted: 16 random characters are beyond guessing over HTTP.
MIN_TOKEN_LENGTH = 16

#: ``(host, port)`` for TCP, a path for a Unix socket: what ZEO calls an address.
Address = tuple[str, int] | str

_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\s/\[\]]+)):(?P<port>\d{1,5})")


def parse_address(text: str) -> Address:
    """``"host:port"`` (``"[::1]:8100"`` for IPv6) as a tuple; anything with a ``/`` is a socket path.

    Raises ``ValueError`` saying what an address looks like.
    """
    if "/" in text:
        return text
    match = _HOST_PORT.fullmatch(text.strip())
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(
            "must be host:port (e.g. 127.0.0.1:8100, [::1]:8100, port 1-65535) or a Unix "
            "socket path containing a '/' (e.g. ./var/zeo.sock)"
        )
    return (match["ipv6"] or match["host"], int(match["port"]))


def expand_zeo_uri(uri: str, zeo_address: str) -> str:
    """``zeo://`` with no address (``zeo://?wait_timeout=5`` too) as the URI of *zeo_address*.

    So that app servers reach the ZEO server ``zodbsession zeo`` runs from
    the same configuration, by default its private Unix socket in ``var/``.
    Any other URI, and an address that does not parse, is returned as it is.
    """
    if not uri.startswith("zeo://") or uri[len("zeo://"):].partition("?")[0] != "":
        return uri
    try:
        address = parse_address(zeo_address)
    except ValueError:
        return uri  # the [zeo] check names the address
    if isinstance(address, str):
        base = f"zeo://{os.path.abspath(address)}"  # zodburi needs an absolute socket path
    else:
        host, port = address
        base = f"zeo://[{host}]:{port}" if ":" in host else f"zeo://{host}:{port}"
    query = uri.partition("?")[2]
    return base + (f"?{query}" if query else "")


#: "" sends no SameSite attribute (what Flask's SESSION_COOKIE_SAMESITE = None means).
SameSite = Literal["Lax", "Strict", "None", ""]
Secure = bool | Literal["auto"]


@dataclass(frozen=True)
class StorageSettings:
    """Where the data lives. Give ``pool_size`` at least ``server.threads``."""

    uri: str = "file://var/Data.fs"
    sessions_uri: str = ""  # "": sessions live in the main database
    pool_size: int = 8
    # FileStorage (file://, and the `zodbsession zeo` server's): "always" acknowledges a
    # commit once an fsync (shared by concurrent commits) covers it; "interval" syncs
    # every fsync_interval seconds, and a power cut loses at most that (docs/benchmarks.md).
    fsync: FsyncPolicy = "always"
    fsync_interval: float = 1.0  # seconds, with fsync = "interval"
    request_timeout: float = 10.0  # s a request waits for ZEO's answer or a PostgreSQL statement; 0: none


@dataclass(frozen=True)
class SessionsSettings:
    """Session lifetimes (seconds) and size limits, as ``SessionManager`` applies them."""

    idle_timeout: float = 1800.0
    max_lifetime: float = 28800.0
    access_resolution: float = 60.0
    max_sessions: int = 0  # 0: no limit; at the cap the least recently used one is evicted, anonymous first
    new_per_address_per_minute: int = 60  # while max_sessions is set; 0: no budget
    max_session_bytes: int = 65536  # 0: no limit
    unsaved_changes: UnsavedPolicy = "save"  # a nested value changed in place: save, warn or error


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
    """How the WSGI publisher retries conflicts and hands out response bodies.

    A conflicting request is retried until it commits, within two limits, the
    first one reached ending the retries: ``retry_attempts`` attempts in all
    and ``retry_deadline`` seconds after the first attempt began (0 turns
    either off, not both).
    """

    retry_attempts: int = 0  # 0: no limit on the count, only retry_deadline
    retry_backoff: float = 0.0  # seconds; 0: a conflict is retried at once
    retry_deadline: float = 10.0  # seconds; 0: no limit in time, only retry_attempts
    max_replay_bytes: int = 1048576
    streaming: bool = False
    serialize_same_session: bool = True
    max_request_body: int = 10485760  # bytes; a longer body is answered 413 unread; 0: no limit
    max_waiting_per_session: int = 5  # requests queued behind one session's; past it 429
    session_wait_timeout: float = 10.0  # seconds a request may wait for its session; past it 503

    def options(self) -> FrontDoorOptions:
        """These settings as the front doors' options (which check the values, naming the option)."""
        return FrontDoorOptions.of(
            retry_attempts=self.retry_attempts, retry_backoff=self.retry_backoff,
            retry_deadline=self.retry_deadline, max_replay_bytes=self.max_replay_bytes,
            streaming=self.streaming, serialize_same_session=self.serialize_same_session,
            max_request_body=self.max_request_body or None,  # 0: no limit
            max_waiting_per_session=self.max_waiting_per_session,
            session_wait_timeout=self.session_wait_timeout)


@dataclass(frozen=True)
class ServerSettings:
    """The bundled server; ``app`` is ``"module:callable"``, ``"module:factory()"`` or "" for the demo.

    A WSGI application runs on waitress, an ASGI one (detected, or ``asgi =
    true``) on uvicorn. ``workers`` > 1 forks that many processes sharing one
    listening socket, which needs a storage several processes can open
    (zeo://, RelStorage). The limits protect the application's port from
    clients that hold connections open: ``connection_limit`` connections at
    once, each closed after ``channel_timeout`` seconds without a byte, with
    headers of at most ``max_request_header_size`` bytes. ``trusted_proxy``
    is the address of a reverse proxy whose ``trusted_proxy_headers``
    (``X-Forwarded-Proto`` by default) are believed, so that ``cookie.secure
    = "auto"`` sees HTTPS behind a TLS proxy; "" trusts nobody.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 8
    app: str = ""
    asgi: bool = False  # true: serve app as ASGI even where its signature does not tell
    on_start: str = ""  # "module:callable" called with (db, manager) before serving
    workers: int = 1
    connection_limit: int = 1000
    channel_timeout: int = 30
    max_request_header_size: int = 65536
    trusted_proxy: str = ""  # "": no proxy is trusted; an IP address, or "*" for any
    trusted_proxy_headers: str = "x-forwarded-proto"  # space-separated


@dataclass(frozen=True)
class JanitorSettings:
    """The background expiry sweep; ``interval = 0`` turns it off."""

    interval: float = 60.0
    batch_size: int = 500
    lease: float = 0.0  # seconds per grant of the janitor lease; 0: three intervals


@dataclass(frozen=True)
class ZeoSettings:
    """The ZEO server ``zodbsession zeo`` runs; app servers reach it with a zeo:// URI.

    ``address`` is ``host:port`` or a Unix socket path (anything with a ``/``);
    ``storage`` and ``sessions_storage`` are FileStorage paths on the server.
    A ``storage.uri`` (or ``sessions_uri``) of ``zeo://`` with no address,
    query or not, means this address (``expand_zeo_uri``).
    """

    address: str = "var/zeo.sock"
    storage: str = "var/Data.fs"
    sessions_storage: str = ""  # "": no separate sessions storage is served


@dataclass(frozen=True)
class AdminSettings:
    """The admin listener (metrics, dashboard, revocation); it runs only when ``token`` is set.

    The token is a secret: ``repr`` and every error message leave it out.
    """

    host: str = "127.0.0.1"
    port: int = 8081
    token: str = field(default="", repr=False)  # "": the admin listener is off
    storage_timeout: float = 2.0  # seconds /metrics and the dashboard wait for the storage

    @property
    def enabled(self) -> bool:
        """Whether ``serve`` starts the admin listener: a token is set."""
        return bool(self.token)

    def __repr__(self) -> str:
        token = "<set>" if self.token else "''"
        return (f"AdminSettings(host={self.host!r}, port={self.port!r}, token={token}, "
                f"storage_timeout={self.storage_timeout!r})")


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
    zeo: ZeoSettings = field(default_factory=ZeoSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
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
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}

    def session_manager(self, clock: Callable[[], float] = time.time) -> SessionManager:
        """A ``SessionManager`` with the [sessions] timeouts and limits, on the right database."""
        return SessionManager(
            idle_timeout=self.sessions.idle_timeout,
            max_lifetime=self.sessions.max_lifetime,
            access_resolution=self.sessions.access_resolution,
            max_sessions=self.sessions.max_sessions,
            new_per_address_per_minute=self.sessions.new_per_address_per_minute,
            max_session_bytes=self.sessions.max_session_bytes,
            unsaved_changes=self.sessions.unsaved_changes,
            database=SESSIONS_DATABASE if self.storage.sessions_uri else None,
            clock=clock,
        )

    def front_door_options(self) -> FrontDoorOptions:
        """The [publisher] section as the options both front doors take."""
        return self.publisher.options()

    def open_db(self, *, read_only: bool = False, request_timeout: float | None = None,
                **db_options: Any) -> DB:
        """Open the [storage] database(s); extra keywords go to ``ZODB.DB``.

        *request_timeout* replaces ``storage.request_timeout`` (0: no deadline
        on ZEO calls and PostgreSQL statements, as for a maintenance command).
        """
        return _open_db(
            self.storage.uri,
            sessions_uri=self.storage.sessions_uri or None,
            pool_size=self.storage.pool_size,
            read_only=read_only,
            fsync=self.storage.fsync,
            fsync_interval=self.storage.fsync_interval,
            request_timeout=(self.storage.request_timeout if request_timeout is None
                             else request_timeout),
            **db_options,
        )


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    overrides_source: str = "override",
) -> Settings:
    """Build the settings from defaults < file < environment < *overrides*.

    With *path* None, ``conf/zodbsession.toml`` is read if it exists; a path
    given explicitly must exist. *environ* defaults to ``os.environ``; every
    ``ZODBSESSION_*`` variable in it must name a setting, so a typo fails
    loudly instead of being ignored. *overrides* takes typed values, nested or
    dotted (``{"server.port": 9000}``); *overrides_source* is how errors name
    them (the CLI says "the command line"). Raises ``ConfigError`` naming the key.
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
        layers.append((overrides_source, overrides, False))
    return _build(layers)


# -- building -------------------------------------------------------------------

_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}  # fmt: skip


# {section name -> its class (the field's default factory)}, in declaration order
_SECTIONS: dict[str, Callable[..., Any]] = {
    f.name: f.default_factory for f in dataclasses.fields(Settings)
    if not f.name.startswith("_") and f.default_factory is not dataclasses.MISSING
}
# {"section.key" -> its type hint}, in declaration order
_TYPES: dict[str, Any] = {
    f"{section}.{name}": hint
    for section, cls in _SECTIONS.items()
    for name, hint in get_type_hints(cls).items()
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
            raise ConfigError(name, f"unknown section{hint} {_got(value, source, name)}")
        elif not isinstance(value, Mapping):
            raise ConfigError(name, f"must be a table of settings ([{name}]) {_got(value, source, name)}")
        else:
            flat.update((f"{name}.{key}", v) for key, v in value.items())
    for key, value in flat.items():
        if key not in _TYPES:
            raise ConfigError(
                key, f"unknown setting{_closest(key, list(_TYPES))} {_got(value, source, key)}"
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
    for key in ("storage.uri", "storage.sessions_uri"):
        if isinstance(values.get(key), str):
            values[key] = expand_zeo_uri(values[key], values.get("zeo.address", ZeoSettings.address))
    sections = {}
    for section, cls in _SECTIONS.items():
        kwargs = {k.partition(".")[2]: v for k, v in values.items() if k.startswith(section + ".")}
        sections[section] = cls(**kwargs)
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
    raise ConfigError(key, f"must be {wanted} {_got(value, source, key)}")


def _closest(name: str, candidates: Any) -> str:
    """A "did you mean" for the closest candidate (a mapping shows its value), or ""."""
    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    if not match:
        return ""
    shown = candidates[match[0]] if isinstance(candidates, Mapping) else match[0]
    return f"; did you mean {shown!r}?"


def _got(value: Any, source: str, key: str = "") -> str:
    shown = repr(_shown(key, value))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"(got {shown})" if source == "default" else f"(got {shown} from {source})"


# -- validating -------------------------------------------------------------------

_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: ``module:name`` or ``module:factory()``; dots walk packages before the colon and attributes after.
SPEC_PATTERN = r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*(\(\))?"
_APP_SPEC = re.compile(SPEC_PATTERN)
_HOOK_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_PROXY_HEADERS = {"x-forwarded-proto", "x-forwarded-for", "x-forwarded-host", "x-forwarded-port",
                  "x-forwarded-by", "forwarded"}
_POSITIVE = "must be greater than 0"


def _validate(s: Settings) -> None:
    """Check ranges and the rules between settings; raise on the first failure."""
    try:
        s.publisher.options()  # the front doors check their own options; the key gets its section
    except ConfigError as exc:
        # The option's rule, as the doors state it; the value comes from _fail, with its source.
        _fail(s, f"publisher.{exc.key}", re.sub(r", not [^,]*$", "", exc.problem))
    ss, ck, srv = s.sessions, s.cookie, s.server
    rules: list[tuple[str, bool, str]] = [
        ("storage.pool_size", s.storage.pool_size >= 1, "must be at least 1"),
        ("storage.fsync_interval", 0 < s.storage.fsync_interval <= 300, "must be more than 0 and "
         "at most 300 seconds"),
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
        ("janitor.lease", s.janitor.lease == 0 or s.janitor.lease >= s.janitor.interval,
         "must be 0 (three intervals) or at least janitor.interval"),
        ("server.connection_limit", srv.connection_limit >= 1, "must be at least 1"),
        ("server.channel_timeout", srv.channel_timeout >= 1, "must be at least 1 second"),
        ("server.max_request_header_size", srv.max_request_header_size >= 1024,
         "must be at least 1024 bytes"),
        ("server.trusted_proxy", not re.search(r"\s", srv.trusted_proxy),
         "must be one IP address, '*' for any, or empty to trust no proxy"),
        ("server.trusted_proxy_headers",
         set(srv.trusted_proxy_headers.lower().split()) <= _PROXY_HEADERS,
         "must name some of " + ", ".join(sorted(_PROXY_HEADERS)) + ", separated by spaces"),
        ("server.host", bool(srv.host), "must not be empty"),
        ("server.port", 0 <= srv.port <= 65535, "must be from 0 (any free port) to 65535"),
        ("server.threads", srv.threads >= 1, "must be at least 1"),
        ("server.workers", srv.workers >= 1, "must be at least 1"),
        ("server.app", not srv.app or bool(_APP_SPEC.fullmatch(srv.app)),
         "must be 'module:callable' (e.g. 'myapp.wsgi:application'), 'module:factory()' "
         "or empty for the demo"),
        ("server.on_start", not srv.on_start or bool(_HOOK_SPEC.fullmatch(srv.on_start)),
         "must be 'module:callable' (e.g. 'myapp.audit:subscribe') or empty"),
        ("storage.request_timeout", s.storage.request_timeout >= 0, "must be at least 0 (0: no limit)"),
        ("sessions.max_sessions", ss.max_sessions >= 0, "must be at least 0 (0: no limit)"),
        ("sessions.new_per_address_per_minute", ss.new_per_address_per_minute >= 0,
         "must be at least 0 (0: no budget)"),
        ("sessions.max_session_bytes", ss.max_session_bytes >= 0, "must be at least 0 (0: no limit)"),
        ("janitor.interval", s.janitor.interval >= 0, "must be at least 0 seconds (0: off)"),
        ("janitor.batch_size", s.janitor.batch_size >= 1, "must be at least 1"),
        ("zeo.storage", bool(s.zeo.storage.strip()), "must be a FileStorage path"),
        ("zeo.sessions_storage", s.zeo.sessions_storage != s.zeo.storage,
         "must differ from zeo.storage (or be empty)"),
        ("logging.level", s.logging.level in logging.getLevelNamesMapping(),
         "must be a logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        ("admin.host", bool(s.admin.host), "must not be empty"),
        ("admin.port", 0 <= s.admin.port <= 65535, "must be from 0 (any free port) to 65535"),
        ("admin.storage_timeout", s.admin.storage_timeout > 0, _POSITIVE + " seconds"),
    ]  # fmt: skip
    for key, ok, problem in rules:
        if not ok:
            _fail(s, key, problem)
    _check_admin(s)
    _check_uri(s, "storage.uri", allow_empty=False)
    _check_uri(s, "storage.sessions_uri", allow_empty=True)
    if s.storage.sessions_uri == s.storage.uri:
        _fail(s, "storage.sessions_uri", "must differ from storage.uri (or be empty)")
    try:
        parse_address(s.zeo.address)
    except ValueError as exc:
        _fail(s, "zeo.address", str(exc))
    shared = [u for u in (s.storage.uri, s.storage.sessions_uri) if u and is_embedded(u)]
    if srv.workers > 1 and shared:
        _fail(s, "server.workers", f"{srv.workers} processes cannot share {shared[0]}: a "
              "FileStorage (or memory://) can be opened by one process only; run "
              "`zodbsession zeo` and use a zeo:// URI, or use RelStorage (README, 'Scaling out')")


def _check_admin(s: Settings) -> None:
    """The token, when one is set, and an admin port that cannot collide with the server's."""
    token = s.admin.token
    if not token:
        return  # no token: the admin listener is off, and its address unused
    if not token.strip():
        _fail(s, "admin.token", "is blank: set a real token, or leave it empty (\"\") to keep the "
              "admin listener off")
    if token != token.strip():
        _fail(s, "admin.token", "must not begin or end with whitespace")
    if not (token.isascii() and token.isprintable()):
        _fail(s, "admin.token", "must be printable ASCII, as it travels in an HTTP header")
    if len(token) < MIN_TOKEN_LENGTH:
        _fail(s, "admin.token", f"is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH}, "
              "so that guessing it is hopeless, e.g. the output of "
              "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    admin, server = s.admin, s.server
    wildcard = {"", "0.0.0.0", "::", "[::]"}
    same_host = admin.host == server.host or bool({admin.host, server.host} & wildcard)
    if admin.port and admin.port == server.port and same_host:
        _fail(s, "admin.port", f"must differ from server.port ({server.port}) on the same host "
              f"(admin.host {admin.host!r}, server.host {server.host!r})")


def _check_uri(s: Settings, key: str, *, allow_empty: bool) -> None:
    """Resolve a storage URI without opening it, so a typo fails at start-up."""
    uri = s.get(key)
    if allow_empty and uri == "":
        return
    if "://" not in uri:
        _fail(s, key, "must be a storage URI such as file://var/Data.fs or memory://")
    try:
        resolve(uri)
    except Exception as exc:  # resolvers raise what they like: KeyError, ZConfig's errors...
        reason = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        reason = reason.removeprefix(f"{redact_uri(uri)}: ")  # the value is shown after
        if "unknown storage scheme" in reason:
            scheme = uri.partition(":")[0]
            _fail(s, key, f"unknown storage scheme {scheme!r} (file, memory, zeo, zconfig, "
                  "demo, and sqlite, postgres with RelStorage)")
        _fail(s, key, f"cannot be resolved: {reason}".replace("\n", " "))


def _fail(s: Settings, key: str, problem: str) -> NoReturn:
    value = s.get(key)
    if key.endswith("uri"):
        value = redact_uri(value)  # a postgres:// URI may carry a password
    raise ConfigError(key, f"{problem} {_got(value, s.source_of(key), key)}")


def _shown(key: str, value: Any) -> Any:
    """*value* as a message may show it: the admin token, or a key that looks like it, as '***'.

    Error messages end up in logs and terminals; a token misspelt as
    ``tokn`` must not be printed in the "unknown setting" error either.
    """
    name = key.rpartition(".")[2].lower()
    if "token" in name or difflib.SequenceMatcher(None, name, "token").ratio() >= 0.6:
        return "***"
    if isinstance(value, Mapping):
        return {k: _shown(f"{key}.{k}", v) for k, v in value.items()}
    return value


def cookie_policy(settings: Settings) -> CookiePolicy:
    """The cookie attributes the [cookie] section asks for."""
    cookie = settings.cookie
    return CookiePolicy(
        name=cookie.name,
        path=cookie.path,
        domain=cookie.domain or None,
        secure=cookie.secure,
        httponly=cookie.httponly,
        samesite=cookie.samesite or None,
        max_age=int(settings.sessions.max_lifetime) if cookie.persistent else None,
    )
