"""The side-by-side run: every contender, the same requests, interleaved in rounds.

On a shared machine the speed of the disk and the CPU drifts over minutes.
Measuring one contender after another would turn that drift into a
difference between contenders, so each round runs every contender once
(write phase, then read phase, in an order rotated every round) and the
published figure is the median over rounds of each round's median. The read
phase right after the write phase also keeps zodbsession's sessions *fresh*:
touched less than ``access_resolution`` ago, so a read writes nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from bench.contenders import CONTENDERS, Contender, ZopeSession, fsync_times, raw_commit_times
from bench.workload import Client, Summary, make_clients, median, run_requests

log = logging.getLogger("bench")

KINDS = ("write", "read")


@dataclass(frozen=True)
class CompareConfig:
    """How big the side-by-side run is."""

    sessions: int  # S: sessions stored before measuring, the clients' included
    clients: int  # C: clients, each with its own cookie
    requests: int  # per contender, per kind, per round
    rounds: int
    warmup: int  # requests per kind before the first round, not measured


def run_rounds(
    contenders: dict[str, Contender],
    clients: dict[str, list[Client]],
    config: CompareConfig,
    extra: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Warm up, then run *config.rounds* interleaved rounds; per-contender results.

    *extra* maps a name to a function ``(count) -> ns list`` measured as a
    write-only pseudo-contender in the same rounds (the raw storage limits).
    """
    extra = extra or {}
    for contender_clients in clients.values():
        for kind in KINDS:
            run_requests(contender_clients, kind, config.warmup)
    rounds: dict[str, dict[str, list[Summary]]] = {n: {k: [] for k in KINDS} for n in clients}
    rounds.update({n: {"write": []} for n in extra})
    written: dict[str, dict[str, int]] = {n: {k: 0 for k in KINDS} for n in clients}
    names = list(clients) + list(extra)
    for round_no in range(config.rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            if name in extra:
                rounds[name]["write"].append(Summary.of(extra[name](config.requests)))
                continue
            for kind in KINDS:
                before = contenders[name].bytes_written()
                times = run_requests(clients[name], kind, config.requests)
                written[name][kind] += contenders[name].bytes_written() - before
                rounds[name][kind].append(Summary.of(times))
        log.info("round %d of %d done", round_no + 1, config.rounds)
    results: dict[str, dict[str, Any]] = {}
    for name, by_kind in rounds.items():
        entry: dict[str, Any] = {}
        for kind, summaries in by_kind.items():
            entry[kind] = combine(summaries)
            if name in written:
                measured = config.requests * config.rounds
                entry[kind]["bytes_per_1000"] = written[name][kind] * 1000 / measured
        results[name] = entry
    return results


def combine(summaries: list[Summary]) -> dict[str, Any]:
    """Median over rounds of each statistic, with the per-round figures kept."""
    return {
        "median_us": median([s.median_us for s in summaries]),
        "p99_us": median([s.p99_us for s in summaries]),
        "requests_per_s": median([s.requests_per_s for s in summaries]),
        "rounds": [asdict(s) for s in summaries],
    }


def check_counters(clients: dict[str, list[Client]]) -> dict[str, bool]:
    """Whether every client's counter, read back, equals its acknowledged writes."""
    ok = {}
    for name, contender_clients in clients.items():
        if name == "bare":  # one shared dict: its total is the sum
            continue
        good = True
        for client in contender_clients:
            client.read()
            good = good and int(client.last_body) == client.acked
        ok[name] = good
    return ok


def compare(config: CompareConfig, workdir: Path) -> dict[str, Any]:
    """Build every contender with S sessions, run the rounds, return the results."""
    contenders: dict[str, Contender] = {}
    clients: dict[str, list[Client]] = {}
    build_seconds: dict[str, float] = {}
    try:
        for name, cls in CONTENDERS.items():
            started = time.monotonic()
            directory = workdir / name
            directory.mkdir(parents=True, exist_ok=True)
            contenders[name] = cls(directory, config.sessions - config.clients)
            clients[name] = make_clients(contenders[name].app, config.clients)
            build_seconds[name] = time.monotonic() - started
            log.info("built %s with %d sessions in %.1f s", name, config.sessions, build_seconds[name])
        extra = {
            "filestorage-commit": lambda n: raw_commit_times(workdir, n + 1),
            "fsync": lambda n: fsync_times(workdir, n),
        }
        results = run_rounds(contenders, clients, config, extra)
        counters = check_counters(clients)
        zope = cast(ZopeSession, contenders["zope.session"])
        sweep_us = zope.time_sweep_request(clients["zope.session"][0].read)
    finally:
        for contender in contenders.values():
            contender.close()
    for name, ok in counters.items():
        results[name]["counters_match"] = ok
    for name, contender in contenders.items():
        results[name]["bytes_meaning"] = contender.bytes_meaning
    return {
        "config": asdict(config),
        "contenders": results,
        "build_seconds": build_seconds,
        "zope_session_sweep_request_us": sweep_us,
    }
