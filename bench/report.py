"""Turning one run's results into the published table, the goal verdicts, JSON and a plot.

Everything here reads the results dictionary that ``run`` assembles and
nothing else, so a saved JSON file can be re-rendered (``python -m bench
--render FILE``). Goals are judged on ratios between figures of the same
run; absolute microseconds move between runs and machines, ratios much less.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions the table names.
PACKAGES = ("zodbsession", "ZODB", "BTrees", "persistent", "transaction", "zope.minmax",
            "zope.session", "Beaker", "waitress", "matplotlib")

#: Row order and labels of the side-by-side table.
ROWS = ("bare", "plain-zodb", "zodbsession", "zope.session", "beaker-file",
        "filestorage-commit", "fsync")


def machine(command: str) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, Python, packages, command, commit."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "command": command,
        "git": _git_revision(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}{' (with uncommitted changes)' if dirty else ''}" if rev else None


# -- goals -------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal of issue #6 with its measured value and verdict (met / missed / n/a)."""
    side = results.get("compare", {}).get("contenders", {})

    def med(name: str, kind: str) -> float | None:
        return side.get(name, {}).get(kind, {}).get("median_us")

    verdicts: list[dict[str, Any]] = []

    def add(goal: str, value: float | None, target: str, check: Callable[[float], bool],
            unit: str = "x", shown: str | None = None) -> None:
        met = None if value is None else bool(check(value))
        if shown is None:
            shown = "-" if value is None else f"{value:,.2f}{unit}"
        verdicts.append({"goal": goal, "measured": value, "shown": shown, "target": target,
                         "met": met})

    add("write vs plain-ZODB write", _ratio(med("zodbsession", "write"), med("plain-zodb", "write")),
        "<= 1.15x", lambda r: r <= 1.15)
    read_bytes = side.get("zodbsession", {}).get("read", {}).get("bytes_per_1000")
    add("bytes appended per 1,000 fresh reads", read_bytes, "0", lambda b: b == 0, unit=" B")
    add("read vs plain-ZODB read", _ratio(med("zodbsession", "read"), med("plain-zodb", "read")),
        "<= 1.5x", lambda r: r <= 1.5)
    scale = results.get("scale")
    if scale:
        sizes = scale["sizes"]
        points = scale["contenders"]["zodbsession"]
        for kind in ("write", "read"):
            small = points[str(sizes[0])][kind]["median_us"]
            large = points[str(sizes[-1])][kind]["median_us"]
            add(f"{kind} at S={sizes[-1]:,} vs S={sizes[0]:,}", _ratio(large, small), "<= 1.3x",
                lambda r: r <= 1.3)
    expiry = results.get("expiry")
    if expiry:
        ratio = expiry["cost_ratio_large_to_small_per_session"]
        add(f"expiry cost per session, {expiry['large']:,} vs {expiry['small']:,} expired "
            f"among {expiry['total']:,}", ratio, "0.5x..2x (proportional)",
            lambda r: 0.5 <= r <= 2.0)
        rss = max(run["peak_rss_mb"] for run in expiry["expire"].values())
        add(f"peak RSS expiring {expiry['large']:,} of {expiry['total']:,}", rss, "< 300 MB",
            lambda m: m < 300, shown=f"{rss:.0f} MB")
    add("zope.session write / zodbsession write", _ratio(med("zope.session", "write"),
        med("zodbsession", "write")), ">= 1.4x", lambda r: r >= 1.4)
    add("zope.session read / zodbsession read", _ratio(med("zope.session", "read"),
        med("zodbsession", "read")), ">= 5x", lambda r: r >= 5)
    add("beaker-file write / zodbsession write", _ratio(med("beaker-file", "write"),
        med("zodbsession", "write")), "> 1x", lambda r: r > 1)
    add("beaker-file read / zodbsession read", _ratio(med("beaker-file", "read"),
        med("zodbsession", "read")), "> 1x", lambda r: r > 1)
    http = results.get("http")
    if http:
        add(f"HTTP errors under {http['clients']} clients", http["errors"], "0", lambda e: e == 0,
            shown=str(http["errors"]))
        add("HTTP counters equal acknowledged increments", float(http["counters_match"]), "yes",
            lambda ok: ok == 1.0, shown="yes" if http["counters_match"] else "no")
    return verdicts


# -- the table ---------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "n/a"}[met]


def render(results: dict[str, Any]) -> str:
    """The whole report as Markdown: machine, side by side, scale, expiry, HTTP, goals."""
    out: list[str] = []
    info = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    out += [
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']} on {info['platform']}.",
        f"Packages: {versions}.",
        f"Command: `{info['command']}` ({results['mode']} mode), {info['date']}, commit {info['git']}.",
        "",
    ]
    compare = results.get("compare")
    if compare:
        out += _render_compare(compare)
    if results.get("cpu_only"):
        out += _render_cpu(results["cpu_only"], results["modes"][results["mode"]]["cpu"])
    if results.get("scale"):
        out += _render_scale(results["scale"])
    if results.get("expiry"):
        out += _render_expiry(results["expiry"])
    if results.get("http"):
        out += _render_http(results["http"])
    if results.get("counts"):
        from bench.counts import render as render_counts

        out += ["### Counts load cannot bend (in process)", "", render_counts(results["counts"])]
    if results.get("asgi_hops"):
        from bench.asgi_hops import render as render_asgi_hops

        out += [render_asgi_hops(results["asgi_hops"])]
    if results.get("http_compare"):
        from bench.http_compare import render as render_http_compare

        out += ["### Over HTTP, side by side (wrk)", "", render_http_compare(results["http_compare"])]
    measured = [goal for goal in goals(results) if goal["met"] is not None]
    if measured:  # none in a run of only some sections (``--http``)
        out += ["### Goals (ratios from this run)", "",
                "| goal | measured | target | verdict |", "| --- | ---: | --- | --- |"]
        for goal in measured:
            out.append(f"| {goal['goal']} | {goal['shown']} | {goal['target']} | {_verdict(goal['met'])} |")
        out.append("")
    return "\n".join(out)


def _render_compare(compare: dict[str, Any]) -> list[str]:
    config = compare["config"]
    side = compare["contenders"]
    plain = side["plain-zodb"]
    out = [
        f"### Side by side: S = {config['sessions']:,} sessions, C = {config['clients']} clients, "
        f"{config['requests']:,} requests per kind x {config['rounds']} rounds (median of round "
        "medians; p99: median of round p99s)",
        "",
        "| contender | write median us | write p99 us | writes/s | read median us | read p99 us "
        "| reads/s | bytes per 1k writes | bytes per 1k reads | write x plain | read x plain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ROWS:
        entry = side.get(name)
        if entry is None:
            continue
        write, read = entry.get("write", {}), entry.get("read", {})
        out.append(
            f"| {name} | {_f(write.get('median_us'))} | {_f(write.get('p99_us'))} "
            f"| {_f(write.get('requests_per_s'), 0)} | {_f(read.get('median_us'))} "
            f"| {_f(read.get('p99_us'))} | {_f(read.get('requests_per_s'), 0)} "
            f"| {_f(write.get('bytes_per_1000'), 0)} | {_f(read.get('bytes_per_1000'), 0)} "
            f"| {_f(_ratio(write.get('median_us'), plain['write']['median_us']), 2)} "
            f"| {_f(_ratio(read.get('median_us'), plain['read']['median_us']), 2)} |"
        )
    matches = {n: e["counters_match"] for n, e in side.items() if "counters_match" in e}
    out += [
        "",
        f"Counters read back equal acknowledged writes: {matches}. "
        "beaker-file's bytes are all bytes the process wrote (it rewrites files); the ZODB "
        "contenders' are the growth of their FileStorage. filestorage-commit is one "
        "storage-level commit of one small record; fsync is a 100-byte append plus fsync.",
        f"zope.session's implicit sweep, run on a request once per 10 minutes per connection: "
        f"{_f(compare['zope_session_sweep_request_us'] / 1000)} ms for that one request at "
        f"S = {config['sessions']:,}.",
        "",
    ]
    return out


def _render_cpu(cpu: dict[str, Any], config: dict[str, Any]) -> list[str]:
    plain = cpu["plain-zodb"]
    out = [
        f"### CPU only: the ZODB contenders again with `os.fsync` a no-op (S = {config['sessions']:,}, "
        f"{config['requests']:,} requests per kind x {config['rounds']} rounds, in its own process)",
        "",
        "| contender | write median us | read median us | write x plain | read x plain |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in cpu.items():
        out.append(f"| {name} | {_f(entry['write']['median_us'])} | {_f(entry['read']['median_us'])} "
                   f"| {_f(_ratio(entry['write']['median_us'], plain['write']['median_us']), 2)} "
                   f"| {_f(_ratio(entry['read']['median_us'], plain['read']['median_us']), 2)} |")
    out += ["", "Not a deployment figure (nothing is durable): it shows the CPU each layer adds "
            "once the disk's floor is taken out.", ""]
    return out


def _render_scale(scale: dict[str, Any]) -> list[str]:
    sizes = scale["sizes"]
    points = scale["contenders"]
    zs0 = points["zodbsession"][str(sizes[0])]
    out = [
        f"### Per-request time vs stored sessions S ({scale['config']['requests']:,} requests "
        f"per kind x {scale['config']['rounds']} rounds, interleaved across sizes)",
        "",
        "| S | plain write us | zodbsession write us | plain read us | zodbsession read us "
        f"| zodbsession write x S={sizes[0]:,} | zodbsession read x S={sizes[0]:,} | build s "
        "(zodbsession) | file MB (zodbsession) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in sizes:
        plain = points["plain-zodb"][str(size)]
        zs = points["zodbsession"][str(size)]
        out.append(
            f"| {size:,} | {_f(plain['write']['median_us'])} | {_f(zs['write']['median_us'])} "
            f"| {_f(plain['read']['median_us'])} | {_f(zs['read']['median_us'])} "
            f"| {_f(_ratio(zs['write']['median_us'], zs0['write']['median_us']), 2)} "
            f"| {_f(_ratio(zs['read']['median_us'], zs0['read']['median_us']), 2)} "
            f"| {_f(zs['build']['seconds'])} | {_f(zs['build']['file_bytes'] / 1e6, 0)} |"
        )
    out.append("")
    return out


def _render_expiry(expiry: dict[str, Any]) -> list[str]:
    out = [
        f"### Expiry and pack among {expiry['total']:,} sessions (each in its own process)",
        "",
        "| operation | sessions | seconds | us per session | peak RSS MB | file MB after |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in ("small", "large"):
        run = expiry["expire"][label]
        out.append(f"| `SessionManager.expire` | {run['removed']:,} | {_f(run['seconds'], 2)} "
                   f"| {_f(run['us_per_removed'])} | {_f(run['peak_rss_mb'], 0)} "
                   f"| {_f(run['file_bytes_after'] / 1e6, 0)} |")
    packed = expiry["pack"]
    out.append(f"| `maintenance.pack` after the {expiry['large']:,} | {expiry['total'] - expiry['large']:,} "
               f"kept | {_f(packed['seconds'], 2)} | - | {_f(packed['peak_rss_mb'], 0)} "
               f"| {_f(packed['size_after'] / 1e6, 0)} (from {_f(packed['size_before'] / 1e6, 0)}) |")
    out += ["", "Peak RSS includes the interpreter and the opened FileStorage's index "
            f"({_f(expiry['expire']['large']['rss_after_open_mb'], 0)} MB after opening).", ""]
    return out


def _render_http(http: dict[str, Any]) -> list[str]:
    return [
        "### Over HTTP: `zodbsession serve` (demo app, defaults) on loopback, POST /api/counter",
        "",
        "| clients | requests | seconds | requests/s | median ms | p99 ms | errors | retries "
        "| counters = acknowledged |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {http['clients']} | {http['requests']:,} | {_f(http['seconds'])} "
        f"| {_f(http['requests_per_s'], 0)} | {_f(http['median_ms'], 2)} | {_f(http['p99_ms'], 2)} "
        f"| {http['errors']} | {http['retries']} | {'yes' if http['counters_match'] else 'NO'} |",
        "",
    ]


# -- files -------------------------------------------------------------------------


def write_json(results: dict[str, Any], path: Path) -> None:
    """Save the results, rounds and all, for re-rendering and comparison."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


def plot(results: dict[str, Any], path: Path) -> None:
    """Two panels: the contenders side by side, and per-request time against S."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if results.get("scale") else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    side = results["compare"]["contenders"]
    names = [n for n in ROWS[:5] if n in side]
    xs = range(len(names))
    for offset, kind in ((-0.2, "write"), (0.2, "read")):
        values = [side[n][kind]["median_us"] for n in names]
        bars = axes[0][0].bar([x + offset for x in xs], values, width=0.4, label=kind)
        axes[0][0].bar_label(bars, fmt="%.0f", fontsize=7)
    raw = side.get("filestorage-commit")
    if raw:
        axes[0][0].axhline(raw["write"]["median_us"], linestyle=":", color="grey",
                           label="one FileStorage commit")
    axes[0][0].set_xticks(list(xs), names, rotation=15)
    axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel("median us per request (log)")
    axes[0][0].set_title(f"side by side, S = {results['compare']['config']['sessions']:,}")
    axes[0][0].legend(fontsize=8)
    if panels == 2:
        scale = results["scale"]
        sizes = scale["sizes"]
        for name, style in (("plain-zodb", "--"), ("zodbsession", "-")):
            for kind, marker in (("write", "o"), ("read", "s")):
                values = [scale["contenders"][name][str(s)][kind]["median_us"] for s in sizes]
                axes[0][1].plot(sizes, values, style, marker=marker, label=f"{name} {kind}")
        axes[0][1].set_xscale("log")
        axes[0][1].set_yscale("log")
        axes[0][1].set_xlabel("sessions stored (S)")
        axes[0][1].set_ylabel("median us per request (log)")
        axes[0][1].set_title("per-request time vs S")
        axes[0][1].legend(fontsize=8)
    fig.suptitle(f"zodbsession bench ({results['mode']}), {results['machine']['cpu']}, "
                 f"{results['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
