"""The ``zodbsession`` command line: serve, and maintain a live or offline database.

A thin click layer: every command loads the settings once (``--config``,
then ``ZODBSESSION_*`` variables), calls the Python API in ``server`` or
``maintenance``, and turns our errors into one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
from ZEO.Exceptions import ClientDisconnected

from zodbsession.config import Settings, load_settings
from zodbsession.core.db import file_locks, file_path, redact_uri
from zodbsession.core.errors import ConfigError, DatabaseLocked, ZodbSessionError
from zodbsession.core.manager import SessionManager
from zodbsession.core.private import private_umask
from zodbsession.ops import maintenance
from zodbsession.serve import control

if TYPE_CHECKING:
    from ZODB import DB

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="Settings file [default: conf/zodbsession.toml if present].",
)


def _one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn zodbsession errors into one line on stderr and exit status 2.

    A ZEO server lost in the middle of a command (``ClientDisconnected``,
    raised after the URI's wait_timeout) is one line and status 1: the work
    done so far was committed in batches, the rest was not.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ZodbSessionError as exc:
            click.echo(f"zodbsession: {exc}", err=True)
            sys.exit(2)
        except ClientDisconnected as exc:
            click.echo(f"zodbsession: lost the ZEO server ({exc or 'disconnected'}); "
                       "batches committed before that are kept, run the command again", err=True)
            sys.exit(1)

    return wrapper


def _settings(config_path: str | None, overrides: dict[str, Any] | None = None) -> Settings:
    settings = load_settings(config_path, overrides=overrides,
                             overrides_source="the command line")
    handler = logging.StreamHandler()
    # The pid tells apart the lines of several workers and servers.
    handler.setFormatter(StartZoneFormatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    logging.basicConfig(level=settings.logging.level, handlers=[handler])
    return settings


class StartZoneFormatter(logging.Formatter):
    """Log times in the time zone the process started in, whatever later changes ``TZ``.

    Django applies its ``TIME_ZONE`` setting (by default America/Chicago) to
    the whole process when its settings load (``os.environ["TZ"]``,
    ``time.tzset()``): the server's log times jumped to Chicago's as soon as
    a Django app was imported. The zone is read once, here: ``TZ`` if set,
    else the system's ``/etc/localtime``, else the current UTC offset.
    """

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self.zone = _start_zone()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, self.zone)
        if datefmt:
            return moment.strftime(datefmt)
        return f"{moment:%Y-%m-%d %H:%M:%S},{int(record.msecs):03d}"


def _start_zone() -> tzinfo:
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as localtime:
            return ZoneInfo.from_file(localtime)
    except (OSError, ValueError, ZoneInfoNotFoundError):
        zone = datetime.now().astimezone().tzinfo
        return zone if zone is not None else UTC


@contextmanager
def _database(config_path: str | None, *, read_only: bool = False
              ) -> Iterator[tuple[Any, SessionManager]]:
    settings = _settings(config_path)
    # A command's output is its answer; ZEO's and RelStorage's clients narrate
    # each connection (and RelStorage each pack step) at INFO.
    for noisy in ("ZEO", "relstorage"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # A record that cannot be loaded is the command's to report (verify lists
    # it); ZODB.Connection would print a raw traceback for it first.
    logging.getLogger("ZODB.Connection").setLevel(logging.CRITICAL)
    _require_existing(settings, config_path)
    # No request deadline: a command is no request, and a pack's or a
    # sweep's statements may rightly take minutes (Ctrl-C stops a command).
    db = settings.open_db(read_only=read_only, request_timeout=0)
    try:
        yield db, settings.session_manager()
    finally:
        db.close()


def _require_existing(settings: Settings, config_path: str | None) -> None:
    """Refuse, in one line, a database that does not exist: a maintenance command never makes one.

    Opening a file:// URI (or RelStorage's SQLite directory) creates an empty
    database; ``stats`` run in the wrong directory then reported "live
    sessions 0" and left a stray ``var/Data.fs`` behind. Only ``serve`` and
    ``zeo`` create databases, and they log it.
    """
    for key, uri in (("storage.uri", settings.storage.uri),
                     ("storage.sessions_uri", settings.storage.sessions_uri)):
        missing = _missing_path(uri) if uri else None
        if missing is not None:
            raise ConfigError(key, f"no database at {os.path.abspath(missing)} (looked for "
                              f"{redact_uri(uri)}, config {config_path or _default_config_name()}); "
                              "maintenance commands never create one: run it where the database is, "
                              "give --config or ZODBSESSION_STORAGE_URI, or start `zodbsession serve` "
                              "to create it")


def _missing_path(uri: str) -> str | None:
    """The file or directory *uri* would create on opening, when it does not exist yet."""
    path = file_path(uri)
    if path is not None:
        return None if os.path.exists(path) else path
    if uri.startswith(("sqlite://", "sqlite3://")):
        data_dir = parse_qs(urlsplit(uri).query).get("data_dir", [None])[0]
        if data_dir and not glob.glob(os.path.join(glob.escape(data_dir), "*.sqlite3")):
            return data_dir
    return None


class _LocalBackend:
    """Where a maintenance command runs with the server stopped: on the database, opened here.

    Its results have the shape of ``_LiveBackend``'s, the control socket's
    JSON (the ``as_dict()`` of ``maintenance``'s results), so that a command
    prints the same whether the server is stopped or running.
    """

    def __init__(self, db: DB, manager: SessionManager) -> None:
        self.db, self.manager = db, manager

    def run(self, command: str, progress: Callable[[int], None] | None = None, **args: Any) -> Any:
        """Run *command* with *args* (None values left out); *progress* counts expire and revoke --all."""
        args = {key: value for key, value in args.items() if value is not None}
        if progress is not None and command == "expire":
            return {"removed": maintenance.expire_sessions(self.db, self.manager, progress=progress,
                                                           batch_size=args.get("batch_size", 500))}
        if progress is not None and command == "revoke" and args.get("all"):
            return {"revoked": maintenance.revoke_all(self.db, self.manager, progress=progress)}
        return control.COMMANDS[command](self.db, self.manager, args)


class _LiveBackend:
    """Where a maintenance command runs while a server holds the database: in that server."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def run(self, command: str, progress: Callable[[int], None] | None = None, **args: Any) -> Any:
        """Run *command* with *args* in the server, over its control socket; *progress* is not called."""
        return control.call(self.socket_path, command, **args)


#: Where a maintenance command runs: ``_backend`` picks one.
_Backend = _LocalBackend | _LiveBackend


@contextmanager
def _backend(config_path: str | None) -> Iterator[_Backend]:
    """The database opened here, or, when a running server holds its FileStorage, that server.

    The server offers its database on a control socket beside the file
    (``var/Data.fs.control``, mode 0600); a locked file with no server
    answering there is the one-line ``DatabaseLocked`` error as before.
    """
    opened = False
    try:
        with _database(config_path) as (db, manager):
            opened = True
            yield _LocalBackend(db, manager)
            return
    except DatabaseLocked:
        if opened:  # raised by the command itself, not by opening
            raise
        socket_file = control.server_socket(load_settings(config_path).storage)
        if socket_file is None or not control.answers(socket_file):
            raise
    yield _LiveBackend(socket_file)


@contextmanager
def _progress(label: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal, silence elsewhere; yields a done-count callback."""
    if not sys.stderr.isatty():
        yield lambda done: None
        return
    bar: Any
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        shown = [0]

        def update(done: int) -> None:
            bar.update(done - shown[0])
            shown[0] = done

        yield update


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(timestamp: float, now: float) -> str:
    """How far *timestamp* is from *now*, as a person says it: "3 h 2 min ago", "in 25 min"."""
    seconds = abs(now - timestamp)
    if seconds < 60:
        span = f"{seconds:.0f} s"
    elif seconds < 3600:
        span = f"{seconds // 60:.0f} min"
    elif seconds < 86400:
        span = f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
    else:
        span = f"{seconds // 86400:.0f} d {seconds % 86400 // 3600:.0f} h"
    return f"in {span}" if timestamp > now else f"{span} ago"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=None, package_name="zodbsession", prog_name="zodbsession",
                      message="%(prog)s %(version)s")
def main() -> None:
    """Transactional ZODB web sessions: serve them, inspect and maintain them."""
    # Every file a command makes, now or later (the index at close, a pack's
    # .old, a truncation's copy, the ZEO and control sockets), only for its user.
    private_umask()


@main.command()
@config_option
@click.option("--app", "app_spec", default=None, metavar="MODULE:APP",
              help="Your WSGI or ASGI application, module:app or module:factory() to call a "
                   "factory; the current directory is importable [default: server.app, else "
                   "the demo app].")
@click.option("--asgi", is_flag=True, default=None,
              help="Serve the app as ASGI (on uvicorn) even if its signature does not say so.")
@click.option("--host", default=None, help="Address to listen on [default: server.host].")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on, 0 for any free one [default: server.port].")
@click.option("--workers", type=int, default=None, metavar="N",
              help="Processes sharing the address; above 1 needs a zeo:// or RelStorage "
                   "URI [default: server.workers].")
@_one_line_errors
def serve(config_path: str | None, app_spec: str | None, asgi: bool | None, host: str | None,
          port: int | None, workers: int | None) -> None:
    """Serve a WSGI or ASGI application inside the session publisher or middleware."""
    from zodbsession.serve.server import serve as run_server

    given = {"server.workers": workers, "server.host": host, "server.port": port,
             "server.asgi": asgi, "server.app": app_spec}
    settings = _settings(config_path, {k: v for k, v in given.items() if v is not None})
    run_server(settings, config_name=config_path or _default_config_name())


@main.command()
@config_option
@_one_line_errors
def zeo(config_path: str | None) -> None:
    """Run the ZEO server that zeo:// app servers share ([zeo] settings)."""
    from zodbsession.serve.zeo import run_zeo

    run_zeo(_settings(config_path))


def _default_config_name() -> str:
    from zodbsession.config import DEFAULT_PATH

    return str(DEFAULT_PATH) if DEFAULT_PATH.is_file() else "built-in defaults"


@main.command()
@config_option
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Index entries per transaction [default: janitor.batch_size].")
@_one_line_errors
def expire(config_path: str | None, batch_size: int | None) -> None:
    """Remove every session whose idle timeout or lifetime has passed."""
    with _backend(config_path) as backend, _progress("expiring") as progress:
        removed = backend.run("expire", progress, batch_size=batch_size or 500)["removed"]
    click.echo(f"expired {removed} session(s)")


@main.command()
@config_option
@click.option("--days", default=0.0, type=click.FloatRange(min=0), show_default=True,
              help="Keep history newer than this many days.")
@click.option("--database", type=click.Choice(["main", "sessions"]), default=None,
              help="Which database [default: the sessions database, if separate].")
@_one_line_errors
def pack(config_path: str | None, days: float, database: str | None) -> None:
    """Pack a database, dropping old revisions and unreachable objects."""
    with _backend(config_path) as backend:
        result = backend.run("pack", days=days, database=database)
    where = f"packed {result['database']} ({result['path'] or result['storage_class']})"
    if result.get("size_note"):  # a relational database's size: no measure of what the pack freed
        click.echo(f"{where} in {result['duration']:.2f} s; size {result['size_before']} -> "
                   f"{result['size_after']} bytes, {result['size_note']}")
        return
    click.echo(f"{where}: {result['size_before']} -> {result['size_after']} bytes in "
               f"{result['duration']:.2f} s")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_one_line_errors
def stats(config_path: str | None, as_json: bool) -> None:
    """Show how many sessions there are, live and expired, the database's size, and the
    running server's counters when PROMETHEUS_MULTIPROC_DIR names its metrics directory.
    """
    with _backend(config_path) as backend:
        figures = backend.run("stats")
        metrics = _metrics_figures(backend, figures)
    if as_json:
        click.echo(json.dumps({**figures, "metrics": metrics}, indent=2, sort_keys=True, default=list))
        return
    click.echo(f"live sessions     {figures['live_sessions']}")
    click.echo(f"expired sessions  {figures['expired_sessions']} (the next sweep removes them)")
    click.echo(f"stored sessions   {figures['stored_sessions']}")
    click.echo(f"users             {figures['users']}")
    for database in figures["databases"]:
        click.echo(f"database {database['name']}: {database['storage_class']} {database['storage_name']}, "
                   f"{database['size_bytes']} bytes, last pack {_when(database['last_pack'])}, "
                   f"{database['cached_objects']} cached objects")
    _echo_counters(metrics)


def _metrics_figures(backend: _Backend, stats: dict[str, Any]) -> dict[str, Any]:
    """What ``/metrics`` would show that can be had here: the database's figures, and
    the server's counters from its multiprocess directory when the environment names one.

    The shape of ``Metrics.snapshot()``, plus ``multiprocess_dir``; without a
    directory only the database's figures (taken from *stats*: the stored
    count and the sizes). Only reads: a ``Metrics`` made here would add files
    of its own to the server's directory.
    """
    from zodbsession.ops.metrics import MULTIPROC_ENV, combined_snapshot

    directory = os.environ.get(MULTIPROC_ENV) or None
    figures: dict[str, Any] = {"multiprocess_dir": directory}
    if directory is not None:
        if not os.path.isdir(directory):
            raise ConfigError(MULTIPROC_ENV, f"must name the running server's metrics directory, "
                              f"which exists (got {directory!r})")
        figures.update(combined_snapshot(directory))
    figures["live_sessions"] = stats["stored_sessions"]
    figures["storage_bytes"] = {d["name"]: d["size_bytes"] for d in stats["databases"]}
    return figures


def _echo_counters(metrics: dict[str, Any]) -> None:
    if metrics["multiprocess_dir"] is None:
        click.echo("server counters   not here: scrape /metrics on the admin listener, or set "
                   "PROMETHEUS_MULTIPROC_DIR to the server's directory (--workers: var/metrics)")
        return
    requests = metrics["requests"]
    outcomes = ", ".join(f"{name} {count}" for name, count in requests.items() if count)
    commits = metrics["commit_seconds"]
    mean = f", mean {commits['sum'] / commits['count'] * 1000:.2f} ms" if commits["count"] else ""
    janitor = metrics["janitor"]
    last = (f"last {_when(janitor['last_run'])}, removed {janitor['last_removed']}"
            if janitor["last_run"] else "none yet")
    click.echo(f"server counters (since the server started, from {metrics['multiprocess_dir']}):")
    click.echo(f"  requests        {metrics['requests_total']}" + (f" ({outcomes})" if outcomes else ""))
    click.echo(f"  retries         {metrics['retries']}, of which conflicts {metrics['conflicts']}")
    click.echo(f"  answered 503    {metrics['answers_503']}")
    click.echo(f"  commits         {commits['count']}{mean}")
    click.echo("  sessions        " + ", ".join(f"{kind} {count}"
                                                for kind, count in metrics["sessions"].items()))
    click.echo(f"  janitor sweeps  {janitor['runs']}, removed {janitor['removed']}; {last}")
    for name, pool in metrics["pool"].items():
        click.echo(f"  connections     {name}: {pool['in_use']} in use of {pool['size']} pooled")


@main.command(name="ls")
@config_option
@click.option("--user", default=None, help="Only this user's sessions.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, one object per line.")
@_one_line_errors
def list_command(config_path: str | None, user: str | None, limit: int | None,
                 as_json: bool) -> None:
    """List sessions' bookkeeping (never their data)."""
    with _backend(config_path) as backend:
        if isinstance(backend, _LiveBackend):
            infos = backend.run("ls", user=user, limit=limit)
        else:  # streamed, a chunk at a time, however many there are
            infos = (i.as_dict() for i in maintenance.list_sessions(backend.db, backend.manager,
                                                                     user=user, limit=limit))
        for info in infos:
            if as_json:
                click.echo(json.dumps(info, sort_keys=True))
            else:
                click.echo(f"{info['id']}  {info['user_id'] or '-':<16}  last {_when(info['last_access'])}"
                           f"  {'live' if info['live'] else 'expired'}")


@main.command()
@config_option
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_one_line_errors
def show(config_path: str | None, session_id: str, as_json: bool) -> None:
    """Show one session: its bookkeeping and its data.

    Session ids may start with '-': put such an id after '--'.
    """
    with _backend(config_path) as backend:
        figures = backend.run("show", session_id=session_id)
    if as_json:
        click.echo(json.dumps(figures, indent=2, sort_keys=True, default=str))
        return
    now = time.time()
    data = figures.pop("data")
    for key, value in figures.items():
        if key in ("created", "last_access", "deadline"):
            value = f"{_when(value)} ({_age(value, now)})"
        click.echo(f"{key + ':':<13}{value}")
    click.echo("data:" if data else "data:        (empty)")
    for key, shown in data.items():
        click.echo(f"  {key} = {shown}")  # already a repr: 'hello' for a string, 3 for a number


@main.command()
@config_option
@click.argument("session_id", required=False)
@click.option("--user", default=None, help="Revoke every session of this user.")
@click.option("--all", "revoke_everything", is_flag=True,
              help="Revoke every session (asks first on a terminal).")
@click.option("--yes", "-y", "assume_yes", is_flag=True, help="Do not ask before --all.")
@_one_line_errors
def revoke(config_path: str | None, session_id: str | None, user: str | None,
           revoke_everything: bool, assume_yes: bool) -> None:
    """End one session, all of one user's, or all of them.

    Session ids may start with '-': put such an id after '--'
    (zodbsession revoke -- -Xy3...). On a terminal, --all asks before it
    logs everybody out; --yes (or no terminal: a script) does not ask.
    """
    if sum(map(bool, (session_id, user, revoke_everything))) != 1:
        raise click.UsageError("give exactly one of SESSION_ID, --user U or --all")
    if revoke_everything and not assume_yes and sys.stdin.isatty():
        click.confirm("Revoke every session, logging every user out?", abort=True, err=True)
    with _backend(config_path) as backend:
        if session_id:
            if not backend.run("revoke", session_id=session_id)["revoked"]:
                click.echo(f"zodbsession: no session {session_id}", err=True)
                sys.exit(1)
            click.echo("revoked 1 session")
        elif user:
            click.echo(f"revoked {backend.run('revoke', user=user)['revoked']} session(s)")
        else:
            with _progress("revoking") as progress:
                count = backend.run("revoke", progress, all=True)["revoked"]
            click.echo(f"revoked {count} session(s)")


@main.command()
@config_option
@_one_line_errors
def verify(config_path: str | None) -> None:
    """Check the storage's integrity with ZODB's own checkers.

    A FileStorage that a running server holds is refused: stop the server, or
    verify a copy (see docs/operating.md, "Backups").
    """
    settings = load_settings(config_path)
    with file_locks(settings.storage.uri, settings.storage.sessions_uri), \
            _database(config_path, read_only=True) as (db, _manager):
        report = maintenance.verify(db)
    for check in report.checks:
        click.echo(f"{check.outcome:<8} {check.database}: {check.name}"
                   + (f" ({check.detail})" if check.detail else ""))
    for note in report.notes:
        click.echo(f"note     {note}")
    for problem in report.problems:
        click.echo(f"PROBLEM  {problem}")
    click.echo("the storage is sound" if report.sound else "the storage is NOT sound")
    sys.exit(0 if report.sound else 1)
