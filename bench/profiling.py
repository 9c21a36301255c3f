"""Where zodbsession's time goes: cProfile listings and the CPU-only comparison.

Two views for a goal that is missed. ``profile_requests`` runs the same
requests as the side-by-side run under cProfile and lists the functions that
cost the most, by their own time and by zodbsession's cumulative time.
``cpu_only`` repeats the side-by-side rounds for the ZODB contenders with
``os.fsync`` replaced by a no-op, in a child process: with the disk's floor
taken out, what is left is the CPU each layer adds per request.
"""

from __future__ import annotations

import cProfile
import importlib
import io
import os
import pstats
import tempfile
from pathlib import Path
from typing import Any

from bench.compare import CompareConfig, run_rounds
from bench.contenders import CONTENDERS, Contender
from bench.isolate import in_subprocess
from bench.workload import Client, make_clients, run_requests

#: The contenders compared by ``cpu_only``.
CPU_CONTENDERS = ("plain-zodb", "zodbsession", "zope.session")


def profile_requests(sessions: int, clients: int, requests: int, top: int = 25) -> str:
    """cProfile listings of zodbsession's write and read requests, as text."""
    out = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="zodbsession-bench-") as tmp:
        contender = CONTENDERS["zodbsession"](Path(tmp), sessions - clients)
        try:
            session_clients = make_clients(contender.app, clients)
            for kind in ("write", "read"):
                run_requests(session_clients, kind, requests // 5)  # warm up, then collect
                profiler = cProfile.Profile()
                profiler.enable()
                run_requests(session_clients, kind, requests, collect=False)
                profiler.disable()
                stats = pstats.Stats(profiler, stream=out)
                out.write(f"\n==== zodbsession {kind}: {requests} requests, S = {sessions:,}; "
                          "by own time ====\n")
                stats.sort_stats("tottime").print_stats(top)
                out.write(f"\n==== zodbsession {kind}: cumulative time in zodbsession's code ====\n")
                stats.sort_stats("cumulative").print_stats("zodbsession", top)
        finally:
            contender.close()
    return out.getvalue()


def _no_fsync(fd: int) -> None:
    return None


def _cpu_only_child(config: CompareConfig) -> dict[str, Any]:
    # This child only: the disk's floor taken out. FileStorage bound its own
    # name for os.fsync at import, so that is the one to replace.
    os.fsync = _no_fsync
    importlib.import_module("ZODB.FileStorage.FileStorage").fsync = _no_fsync
    contenders: dict[str, Contender] = {}
    clients: dict[str, list[Client]] = {}
    with tempfile.TemporaryDirectory(prefix="zodbsession-bench-") as tmp:
        try:
            for name in CPU_CONTENDERS:
                directory = Path(tmp) / name
                directory.mkdir()
                contenders[name] = CONTENDERS[name](directory, config.sessions - config.clients)
                clients[name] = make_clients(contenders[name].app, config.clients)
            return run_rounds(contenders, clients, config)
        finally:
            for contender in contenders.values():
                contender.close()


def cpu_only(config: CompareConfig) -> dict[str, Any]:
    """The side-by-side rounds of the ZODB contenders without fsync (in a child)."""
    return in_subprocess(_cpu_only_child, config)
