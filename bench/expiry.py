"""Expiring stale sessions among many, and packing afterwards: time and peak memory.

One database of N sessions is built with three groups on a fixed clock: a
*small* stale group, a *large* stale group (the small one included) and the
fresh rest, with deadlines far enough apart that ``SessionManager.expire``
with ``now`` between them removes exactly the small group, and with ``now``
after both removes the large one. Each expiry runs on its own copy of that
database in a freshly spawned child, so its ``ru_maxrss`` is its own, and
the pack runs on the result of the large expiry. Proportional cost shows as
the same time per removed session for both groups, among the same N.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import transaction
from ZODB import DB
from ZODB.FileStorage import FileStorage

from bench.isolate import in_subprocess, peak_rss_mb
from bench.populate import populate_zodbsession
from zodbsession.core.manager import SessionManager
from zodbsession.core.store import get_container
from zodbsession.ops.maintenance import pack

log = logging.getLogger("bench")

#: The fixed clock of the built database ("now" for its fresh sessions).
NOW = 1_750_000_000.0
#: Created this long before NOW, with default timeouts (30 min idle), a
#: session's deadline is 90 minutes (small group) or 30 minutes (large group,
#: the rest of it) before NOW.
SMALL_AGE = 2 * 3600.0
LARGE_AGE = 3600.0
#: ``now`` for the small expiry: after the small group's deadline, before the large's.
SMALL_EXPIRY_NOW = NOW - 3000.0


def build(path: str, total: int, small: int, large: int) -> dict[str, Any]:
    """Build the database of *total* sessions, *small* and *large* of them stale (in a child)."""
    started = time.monotonic()
    db = DB(FileStorage(path))
    try:
        populate_zodbsession(db, [(small, NOW - SMALL_AGE), (large - small, NOW - LARGE_AGE),
                                  (total - large, NOW)])
        size = db.getSize()
    finally:
        db.close()
    return {"seconds": time.monotonic() - started, "file_bytes": size, "peak_rss_mb": peak_rss_mb()}


def expire(path: str, now: float) -> dict[str, Any]:
    """Open the database and run ``SessionManager.expire(now=now)`` (in a child)."""
    opened = time.monotonic()
    db = DB(FileStorage(path))
    try:
        rss_open = peak_rss_mb()
        open_seconds = time.monotonic() - opened
        conn = db.open(transaction_manager=transaction.TransactionManager())
        try:
            started = time.perf_counter()
            removed = SessionManager().expire(conn, now=now)
            seconds = time.perf_counter() - started
            remaining = len(get_container(conn, create=False))
        finally:
            conn.close()
        size = db.getSize()
    finally:
        db.close()
    return {
        "removed": removed,
        "remaining": remaining,
        "seconds": seconds,
        "us_per_removed": seconds * 1e6 / removed if removed else None,
        "open_seconds": open_seconds,
        "rss_after_open_mb": rss_open,
        "peak_rss_mb": peak_rss_mb(),
        "file_bytes_after": size,
    }


def pack_db(path: str) -> dict[str, Any]:
    """Pack the database with ``zodbsession.ops.maintenance.pack`` (in a child)."""
    db = DB(FileStorage(path))
    try:
        rss_open = peak_rss_mb()
        started = time.perf_counter()
        result = pack(db)
        seconds = time.perf_counter() - started
    finally:
        db.close()
    return {
        "seconds": seconds,
        "size_before": result.size_before,
        "size_after": result.size_after,
        "rss_after_open_mb": rss_open,
        "peak_rss_mb": peak_rss_mb(),
    }


def _copy(source: Path, target: Path) -> None:
    # The index too, or opening the copy would rebuild it by reading the file.
    shutil.copyfile(source, target)
    shutil.copyfile(f"{source}.index", f"{target}.index")


def expiry(total: int, small: int, large: int, workdir: Path) -> dict[str, Any]:
    """Expire *small* and then *large* stale sessions among *total*; pack the latter."""
    source = workdir / "expiry-base.fs"
    built = in_subprocess(build, str(source), total, small, large)
    log.info("built %d sessions (%d stale) in %.1f s", total, large, built["seconds"])
    runs: dict[str, Any] = {}
    for label, now in (("small", SMALL_EXPIRY_NOW), ("large", NOW)):
        target = workdir / f"expiry-{label}.fs"
        _copy(source, target)
        runs[label] = in_subprocess(expire, str(target), now)
        log.info("expired %d in %.1f s, peak RSS %.0f MB", runs[label]["removed"],
                 runs[label]["seconds"], runs[label]["peak_rss_mb"])
    packed = in_subprocess(pack_db, str(workdir / "expiry-large.fs"))
    log.info("packed in %.1f s, peak RSS %.0f MB", packed["seconds"], packed["peak_rss_mb"])
    small_cost, large_cost = runs["small"]["us_per_removed"], runs["large"]["us_per_removed"]
    return {
        "total": total,
        "small": small,
        "large": large,
        "build": built,
        "expire": runs,
        "pack": packed,
        "cost_ratio_large_to_small_per_session": (
            large_cost / small_cost if small_cost and large_cost else None
        ),
    }
