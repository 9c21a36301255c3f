"""``python -m bench --http``: the contenders over HTTP, side by side, driven by wrk.

Every contender is a real server process on loopback serving the same
counter app on waitress with 8 threads (see ``http_apps``): the bare app with
sessions in a dict, zodbsession (``zodbsession serve --app``, defaults), its
ASGI front door (``asgi_app``: ``SessionMiddleware`` on uvicorn, one event
loop, the one contender not on waitress), the
hand-rolled plain-ZODB floor, Beaker on Redis without and with ``appendfsync
always`` (redis-server started here, on loopback), Beaker's file backend, and
the bare app once more on waitress's stock channels (every other waitress
contender runs on ``zodbsession.serve.waitress_server``'s, as ``serve`` does).
wrk (a C load generator) keeps one connection per thread, each with the
cookie of its own session, and ``wrk/counter.lua`` checks every answer's
counter against what that connection saw acknowledged; after each write
phase the bench reads every session back from the server, where no
acknowledged increment may be missing.

Rounds are interleaved (each round runs every contender's write phase, then
its read phase, in an order rotated every round) and the figures are medians
over rounds. Timing never fails the run; a counter mismatch or an HTTP error
does. wrk and redis-server are found on PATH or installed with apt where
that is possible; a contender whose tool is missing is skipped and says why.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.http_load import free_port, server_command

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk" / "counter.lua"

#: The goals of issue #25, as (what, contender, against, at least).
GOALS = (
    ("writes", "zodbsession", "plain-zodb", 1.2),
    ("writes", "zodbsession-relaxed", "plain-zodb", 1.4),
    ("writes", "zodbsession-relaxed", "beaker-redis", 1.0),
    ("reads", "zodbsession", "plain-zodb", 0.9),
    ("reads", "zodbsession", "bare", 0.9),
    ("reads", "zodbsession-asgi", "zodbsession", 0.8),
    ("writes", "zodbsession-asgi", "zodbsession", 0.7),
)
#: Issue #25: fsyncs per acknowledged durable write with 16 writers, at most.
FSYNCS_PER_WRITE_GOAL = 0.67


@dataclass(frozen=True)
class HttpConfig:
    """How long and how wide one ``--http`` run is."""

    rounds: int = 3
    seconds: int = 8
    connections: int = 16
    scale_out: bool = False  # also `serve --workers 2` on ZEO and on RelStorage/PostgreSQL


@dataclass
class Contender:
    """One server process under test and what it measured."""

    name: str
    command: list[str]
    env: dict[str, str]
    needs: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    sessions: list[tuple[str, int]] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    write_cpu_us: list[float] = field(default_factory=list)
    read_cpu_us: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Counts read around each write phase: fsyncs (from the server's /_counts) or WAL syncs.
    sync_counter: Any = None
    syncs_per_write: list[float] = field(default_factory=list)


def find_tools(names: tuple[str, ...]) -> dict[str, str | None]:
    """Each tool's path: on PATH, else installed with apt (as root, where apt exists), else None."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = {"wrk": "wrk", "redis-server": "redis-server"}
        log.info("installing %s with apt", ", ".join(missing))
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["apt-get", "install", "-y", "-qq", *(packages[m] for m in missing)],
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                           capture_output=True, timeout=600, check=False)
        found.update({name: shutil.which(name) for name in missing})
    for name, path in found.items():
        if path is None:
            log.warning("%s is missing (apt-get install %s); its contenders are skipped", name, name)
    return found


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _start(command: list[str], env: dict[str, str], port: int, log_path: Path,
           ) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not _port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{command[0]} did not start:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    return process


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def redis_server(binary: str, workdir: Path, fsync: str) -> Iterator[str]:
    """A redis-server on loopback with AOF persistence, ``appendfsync`` *fsync*; its URL."""
    port = free_port()
    directory = workdir / f"redis-{fsync}"
    directory.mkdir()
    process = _start([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "yes", "--appendfsync", fsync, "--dir", str(directory)],
                     {}, port, directory / "redis.log")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)


def _serve(name: str, env: dict[str, str], *args: str) -> Contender:
    contender = Contender(name, [*server_command(), "serve", "--app",
                                 "bench.http_apps:zodbsession_counter", *args],
                          {"PYTHONPATH": str(ROOT), **env})
    contender.env["ZODBSESSION_SERVER_PORT"] = str(contender.port)
    return contender


def _storage_counts(port: int) -> Any:
    """The server's storage counts (fsyncs, commits) through the bench app's /_counts."""
    def read() -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", "/_counts")
            return int(json.loads(connection.getresponse().read())["fsyncs"])
        finally:
            connection.close()
    return read


def _contenders(workdir: Path, redis: dict[str, str], scale_out: dict[str, Any],
                ) -> list[Contender]:
    serve = [sys.executable, "-m", "bench.http_serve"]
    base = {"PYTHONPATH": str(ROOT)}
    contenders = [Contender("bare", [*serve, "bare"], base)]
    # The same bare app on waitress's own channels, which poll while a task flushes.
    stock = Contender("bare-stock-waitress", [*serve, "bare"], base)
    zodbsession = _serve("zodbsession", {"ZODBSESSION_STORAGE_URI":
                                         f"file://{workdir / 'zs' / 'Data.fs'}"})
    zodbsession.sync_counter = _storage_counts(zodbsession.port)
    contenders.append(zodbsession)
    relaxed = _serve("zodbsession-relaxed", {
        "ZODBSESSION_STORAGE_URI": f"file://{workdir / 'zs-relaxed' / 'Data.fs'}",
        "ZODBSESSION_STORAGE_FSYNC": "interval", "ZODBSESSION_STORAGE_FSYNC_INTERVAL": "1"})
    relaxed.sync_counter = _storage_counts(relaxed.port)
    contenders.append(relaxed)
    if "zeo" in scale_out:
        contenders.append(_serve("zodbsession-zeo-2w", {"ZODBSESSION_STORAGE_URI": scale_out["zeo"],
                                 "PROMETHEUS_MULTIPROC_DIR": str(workdir / "zeo-2w-metrics")},
                                 "--workers", "2"))
    if "postgres" in scale_out:
        uri, wal_syncs = scale_out["postgres"]
        pg = _serve("zodbsession-pg-2w", {"ZODBSESSION_STORAGE_URI": uri,
                                           "PROMETHEUS_MULTIPROC_DIR": str(workdir / "pg-2w-metrics")},
                    "--workers", "2")
        pg.sync_counter = wal_syncs
        contenders.append(pg)
    # The ASGI front door: the same counter inside SessionMiddleware, on uvicorn (bench/asgi_app.py).
    contenders.append(Contender("zodbsession-asgi", [sys.executable, "-m", "bench.asgi_app"],
                                {**base, "ZODBSESSION_STORAGE_URI":
                                 f"file://{workdir / 'zs-asgi' / 'Data.fs'}"}))
    contenders.append(Contender("zodbsession-asgi-threads", [sys.executable, "-m", "bench.asgi_app"],
                                {**base, "BENCH_ASGI_INLINE": "0", "ZODBSESSION_STORAGE_URI":
                                 f"file://{workdir / 'zs-asgi-threads' / 'Data.fs'}"}))
    contenders.append(Contender("plain-zodb", [*serve, "plain_zodb"],
                                {**base, "BENCH_WORKDIR": str(workdir / "plain")}))
    for name, url in redis.items():
        contenders.append(Contender(name, [*serve, "beaker_redis"], {**base, "BENCH_REDIS_URL": url}))
    contenders.append(Contender("beaker-file", [*serve, "beaker_file"],
                                {**base, "BENCH_WORKDIR": str(workdir / "beaker")}))
    contenders.append(stock)
    for contender in contenders:
        if contender.command[:2] == serve[:2] or contender.name.startswith("zodbsession-asgi"):
            contender.command.append(str(contender.port))
        for key in ("BENCH_WORKDIR",):
            if key in contender.env:
                Path(contender.env[key]).mkdir(parents=True, exist_ok=True)
    stock.command.append("stock")
    (workdir / "zs").mkdir()
    (workdir / "zs-relaxed").mkdir()
    (workdir / "zs-asgi").mkdir()
    (workdir / "zs-asgi-threads").mkdir()
    return chosen(contenders, os.environ.get("BENCH_CONTENDERS", ""))


#: Contenders run only when ``BENCH_CONTENDERS`` names them.
OPT_IN = ("zodbsession-asgi-threads",)


def chosen(contenders: list[Contender], names: str) -> list[Contender]:
    """The contenders ``BENCH_CONTENDERS`` (comma-separated names) asks for; empty: all but ``OPT_IN``."""
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    if not wanted:
        return [contender for contender in contenders if contender.name not in OPT_IN]
    unknown = wanted - {contender.name for contender in contenders}
    if unknown:
        raise SystemExit(f"BENCH_CONTENDERS: no contender named {', '.join(sorted(unknown))}")
    return [contender for contender in contenders if contender.name in wanted]


def _request(port: int, method: str, cookie: str | None) -> tuple[int, str, str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Cookie": cookie} if cookie else {}
        connection.request(method, "/count", body=b"" if method == "POST" else None, headers=headers)
        answer = connection.getresponse()
        set_cookie = answer.getheader("Set-Cookie")
        return answer.status, answer.read().decode(), set_cookie.split(";")[0] if set_cookie else None
    finally:
        connection.close()


def _seed(contender: Contender, count: int) -> None:
    """One session per connection, made by a first POST; its cookie and count kept."""
    for _ in range(count):
        status, body, cookie = _request(contender.port, "POST", None)
        if status != 200 or cookie is None or body != "1":
            raise RuntimeError(f"{contender.name}: seeding answered {status} {body!r}, cookie {cookie}")
        contender.sessions.append((cookie, 1))


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of *pid* and its live children (``serve --workers``' worker processes)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


_THREAD_LINE = re.compile(r"^zodbsession-bench (\d+) (\d+) (\d+) (\d+) (\d+)$", re.MULTILINE)


def _phase(wrk: str, contender: Contender, mode: str, config: HttpConfig, workdir: Path,
           ) -> tuple[float, float]:
    """One wrk run against *contender*; its requests/s and server CPU µs per request."""
    cookies = workdir / f"{contender.name}-{mode}.cookies"
    # A read phase follows a write phase whose last write may still be committing.
    slack = 1 if mode == "read" else 0
    cookies.write_text("".join(f"{cookie} {count} {slack}\n" for cookie, count in contender.sessions))
    assert contender.process is not None
    syncs_before = contender.sync_counter() if mode == "write" and contender.sync_counter else None
    cpu_before = _cpu_seconds(contender.process.pid)
    done = subprocess.run(
        [wrk, f"-t{config.connections}", f"-c{config.connections}", f"-d{config.seconds}s",
         "-s", str(LUA), f"http://127.0.0.1:{contender.port}/count", "--", mode, str(cookies)],
        capture_output=True, text=True, timeout=config.seconds + 120, check=False)
    cpu = _cpu_seconds(contender.process.pid) - cpu_before
    if syncs_before is not None:
        total_writes = re.search(r"(\d+) requests in", done.stdout)
        syncs = contender.sync_counter() - syncs_before
        if total_writes and int(total_writes.group(1)):
            contender.syncs_per_write.append(syncs / int(total_writes.group(1)))
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    total = re.search(r"(\d+) requests in", done.stdout)
    threads = _THREAD_LINE.findall(done.stdout)
    if done.returncode != 0 or rate is None or total is None or len(threads) != config.connections:
        contender.errors.append(f"{mode}: wrk failed: {done.stdout[-500:]} {done.stderr[-500:]}")
        return 0.0, 0.0
    for match in re.findall(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", done.stdout):
        contender.errors.append(f"{mode}: wrk reported {match}")
    sessions = list(contender.sessions)
    for thread_id, count, _acked, mismatches, bad_status in threads:
        index = int(thread_id) - 1
        if int(mismatches) or int(bad_status):
            contender.errors.append(f"{mode}: connection {thread_id}: {mismatches} counter mismatches, "
                                    f"{bad_status} non-200 answers")
        sessions[index] = (sessions[index][0], int(count))
    contender.sessions = sessions
    if mode == "write":
        _check_stored(contender)
    return float(rate.group(1)), cpu / max(int(total.group(1)), 1) * 1e6


def _check_stored(contender: Contender) -> None:
    """Every session's stored count: the last one acknowledged, or one more (a write in flight)."""
    checked = []
    for cookie, acknowledged in contender.sessions:
        status, body, _ = _request(contender.port, "GET", cookie)
        stored = int(body) if status == 200 and body.isdigit() else -1
        if not acknowledged <= stored <= acknowledged + 1:
            contender.errors.append(f"stored count {stored} for a session acknowledged at {acknowledged}")
        checked.append((cookie, max(stored, acknowledged)))
    contender.sessions = checked


def http_compare(config: HttpConfig, workdir: Path) -> dict[str, Any]:
    """Run every contender; the results section ``http_compare``."""
    tools = find_tools(("wrk", "redis-server"))
    wrk, redis_binary = tools["wrk"], tools["redis-server"]
    if wrk is None:
        return {"skipped": "wrk is missing (apt-get install wrk)"}
    with contextlib.ExitStack() as stack:
        scale_out: dict[str, Any] = {}
        if config.scale_out:
            from bench.scaleout import postgres_server, zeo_server

            scale_out["zeo"] = stack.enter_context(zeo_server(workdir))
            try:
                scale_out["postgres"] = stack.enter_context(postgres_server(workdir))
            except Exception as exc:  # no PostgreSQL, no driver: say so, run the rest
                log.warning("no PostgreSQL contender: %s", exc)
        redis: dict[str, str] = {}
        if redis_binary is not None:
            redis["beaker-redis"] = stack.enter_context(redis_server(redis_binary, workdir, "everysec"))
            redis["beaker-redis-durable"] = stack.enter_context(
                redis_server(redis_binary, workdir, "always"))
        contenders = _contenders(workdir, redis, scale_out)
        for contender in contenders:
            contender.process = _start(contender.command, contender.env, contender.port,
                                       workdir / f"{contender.name}.log")
            stack.callback(_stop, contender.process)
            _seed(contender, config.connections)
        for round_number in range(config.rounds):
            shift = round_number % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                for mode, rates, cpus in (("write", contender.writes, contender.write_cpu_us),
                                          ("read", contender.reads, contender.read_cpu_us)):
                    rate, cpu = _phase(wrk, contender, mode, config, workdir)
                    rates.append(rate)
                    cpus.append(cpu)
                log.info("round %d %s: %.0f writes/s, %.0f reads/s", round_number + 1, contender.name,
                         contender.writes[-1], contender.reads[-1])
    results: dict[str, Any] = {"config": config.__dict__, "contenders": {}}
    for contender in contenders:
        results["contenders"][contender.name] = {
            "writes_per_s": statistics.median(contender.writes),
            "reads_per_s": statistics.median(contender.reads),
            "write_cpu_us": statistics.median(contender.write_cpu_us),
            "read_cpu_us": statistics.median(contender.read_cpu_us),
            "rounds": {"writes": contender.writes, "reads": contender.reads},
            "syncs_per_write": (statistics.median(contender.syncs_per_write)
                                if contender.syncs_per_write else None),
            "errors": contender.errors,
        }
    if redis_binary is None:
        results["skipped"] = "redis-server is missing (apt-get install redis-server): no Beaker + Redis"
    results["goals"] = goals(results["contenders"])
    return results


def goals(figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of issue #25 with its measured ratio and whether it was met."""
    outcome = []
    durable = figures.get("zodbsession", {}).get("syncs_per_write")
    if durable is not None:
        outcome.append({"goal": f"zodbsession fsyncs per acknowledged write (16 writers) <= "
                                f"{FSYNCS_PER_WRITE_GOAL}", "ratio": durable,
                        "met": durable <= FSYNCS_PER_WRITE_GOAL})
    for what, name, against, at_least in GOALS:
        if name in figures and against in figures and figures[against][f"{what}_per_s"]:
            ratio = figures[name][f"{what}_per_s"] / figures[against][f"{what}_per_s"]
            outcome.append({"goal": f"{name} {what} >= {at_least}x {against}", "ratio": ratio,
                            "met": ratio >= at_least})
    return outcome


def render(section: dict[str, Any]) -> str:
    """The Markdown table of one ``http_compare`` section."""
    if "contenders" not in section:
        return f"Skipped: {section.get('skipped')}\n"
    config = section["config"]
    figures = section["contenders"]
    bare = figures.get("bare", {})
    floor = figures.get("plain-zodb", {})
    lines = [f"{config['connections']} keep-alive connections from wrk, one cookie each; waitress, "
             f"8 threads (zodbsession-asgi: uvicorn, one event loop; `-2w`: `serve --workers 2`, "
             f"8 threads each); median of {config['rounds']} interleaved rounds of "
             f"{config['seconds']:g} s. syncs/write: the server's fsyncs (PostgreSQL: WAL syncs) "
             "per acknowledged write.",
             "", "| contender | writes/s | x floor | x bare | reads/s | x floor | x bare | "
             "syncs/write | server CPU µs/write | server CPU µs/read | errors |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def ratio(entry: dict[str, Any], against: dict[str, Any], kind: str) -> str:
        return (f"{entry[kind] / against[kind]:.2f}" if against.get(kind) else "-")

    for name, entry in figures.items():
        syncs = entry.get("syncs_per_write")
        lines.append(f"| {name} | {entry['writes_per_s']:,.0f} | "
                     f"{ratio(entry, floor, 'writes_per_s')} | {ratio(entry, bare, 'writes_per_s')} | "
                     f"{entry['reads_per_s']:,.0f} | {ratio(entry, floor, 'reads_per_s')} | "
                     f"{ratio(entry, bare, 'reads_per_s')} | "
                     f"{'-' if syncs is None else f'{syncs:.2f}'} | {entry['write_cpu_us']:,.0f} | "
                     f"{entry['read_cpu_us']:,.0f} | {len(entry['errors'])} |")
    lines.append("")
    for goal in section.get("goals", []):
        unit = "" if "fsyncs" in goal["goal"] else "x"
        lines.append(f"- {goal['goal']}: {goal['ratio']:.2f}{unit}, "
                     f"{'met' if goal['met'] else 'missed'}")
    if section.get("skipped"):
        lines.append(f"- {section['skipped']}")
    return "\n".join(lines) + "\n"


def failures(section: dict[str, Any]) -> list[str]:
    """Correctness failures: counter mismatches, lost writes, HTTP errors."""
    return [f"http-compare {name}: {error}" for name, entry in section.get("contenders", {}).items()
            for error in entry["errors"]]


def plot(section: dict[str, Any], path: Path) -> None:
    """Requests per second of every contender over HTTP, writes and reads side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = section["contenders"]
    names = list(figures)
    fig, axis = plt.subplots(figsize=(8, 4.5))
    xs = range(len(names))
    for offset, kind in ((-0.2, "writes"), (0.2, "reads")):
        bars = axis.bar([x + offset for x in xs], [figures[n][f"{kind}_per_s"] for n in names],
                        width=0.4, label=kind)
        axis.bar_label(bars, fmt="%.0f", fontsize=7)
    axis.set_xticks(list(xs), names, rotation=15)
    axis.set_ylabel("requests per second (median of rounds)")
    config = section["config"]
    axis.set_title(f"over HTTP: wrk, {config['connections']} connections, waitress 8 threads")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
