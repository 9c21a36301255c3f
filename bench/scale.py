"""Per-request time as the number of stored sessions S grows (1,000 to 1,000,000).

Each database is built in a child process of its own (see ``populate`` for
how), then every (contender, S) pair is measured in one further child, in
interleaved rounds like the side-by-side run, so that the comparison between
sizes is not a comparison between two moments of a drifting machine. Only
the ZODB contenders that can hold a million sessions cheaply are scaled: the
plain-ZODB reference and zodbsession. (zope.session would sweep every
session on a request once per ten minutes; Beaker's file backend would need
a million files.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.compare import CompareConfig, run_rounds
from bench.contenders import CONTENDERS, Contender, file_size
from bench.isolate import in_subprocess, peak_rss_mb
from bench.workload import Client, make_clients

log = logging.getLogger("bench")

#: The contenders scaled, each on its own FileStorage per size.
SCALED = ("plain-zodb", "zodbsession")


def build_point(name: str, directory: str, filler: int) -> dict[str, Any]:
    """Build one contender's database with *filler* sessions (run in a child)."""
    started = time.monotonic()
    contender = CONTENDERS[name](Path(directory), filler)
    contender.close()
    return {
        "seconds": time.monotonic() - started,
        "file_bytes": file_size(Path(directory) / f"{name}.fs"),
        "peak_rss_mb": peak_rss_mb(),
    }


def measure_points(points: Sequence[tuple[str, int, str]], config: CompareConfig) -> dict[str, Any]:
    """Open every built database and run interleaved rounds over all of them (in a child)."""
    contenders: dict[str, Contender] = {}
    clients: dict[str, list[Client]] = {}
    try:
        for name, size, directory in points:
            key = f"{name}@{size}"
            contenders[key] = CONTENDERS[name](Path(directory), 0, populate=False)
            clients[key] = make_clients(contenders[key].app, config.clients)
        return run_rounds(contenders, clients, config)
    finally:
        for contender in contenders.values():
            contender.close()


def scale(sizes: Sequence[int], config: CompareConfig, workdir: Path) -> dict[str, Any]:
    """Per-request figures of the scaled contenders at every size in *sizes*."""
    points: list[tuple[str, int, str]] = []
    builds: dict[str, dict[str, Any]] = {}
    for size in sizes:
        for name in SCALED:
            directory = workdir / f"scale-{name}-{size}"
            directory.mkdir(parents=True, exist_ok=True)
            builds[f"{name}@{size}"] = in_subprocess(
                build_point, name, str(directory), size - config.clients
            )
            log.info("built %s with %d sessions in %.1f s", name, size,
                     builds[f"{name}@{size}"]["seconds"])
            points.append((name, size, str(directory)))
    log.info("measuring %d databases in interleaved rounds", len(points))
    measured = in_subprocess(measure_points, points, config)
    by_name: dict[str, dict[str, Any]] = {name: {} for name in SCALED}
    for name, size, _directory in points:
        key = f"{name}@{size}"
        by_name[name][str(size)] = {**measured[key], "build": builds[key]}
    return {"sizes": list(sizes), "config": asdict(config), "contenders": by_name}
