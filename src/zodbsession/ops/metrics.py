"""The operator's figures, kept in process with prometheus_client and rendered for scraping.

``Metrics`` is an ``Observer``: subscribed to ``manager.observers``, it counts
session events, request outcomes, retries, conflicts and janitor runs as they
are reported, at the cost of a few locked increments per request. Figures
that belong to the database rather than to the traffic (stored sessions,
connections in use, storage size) are read when scraped, from callables given
at construction, so they cost nothing between scrapes.

Several worker processes (``serve --workers N``) combine their figures through
prometheus_client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set
*before prometheus_client is first imported*, every process writes its values
to files there and ``render`` in any one of them sums them all. A process that
only reads them (``zodbsession stats``) uses ``combined_snapshot``: constructing
a ``Metrics`` would add files of its own.

The module is a little over the house's ~400 lines: the readers and the
multiprocess helpers are small and exist only to feed these figures.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _mark_process_dead
from ZODB import DB
from ZODB.Connection import Connection
from ZODB.POSException import ConflictError

from zodbsession.core.errors import ConfigError
from zodbsession.core.manager import SessionManager
from zodbsession.core.observe import EventKind, Observer, RequestOutcome, SessionEvent
from zodbsession.core.periodic import Periodic
from zodbsession.core.work import connection, in_transaction

__all__ = ["COMMIT_BUCKETS", "CONTENT_TYPE_LATEST", "MULTIPROC_ENV", "STORAGE_READ_TIMEOUT", "BoundedReader",
           "Metrics", "PoolFigures",
           "claim_multiprocess_dir", "clear_multiprocess_dir", "combined_snapshot", "count_sessions",
           "mark_process_dead", "multiprocess_enabled", "pool_figures", "storage_sizes"]

log = logging.getLogger(__name__)

#: The environment variable that turns on prometheus_client's multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Commit latency buckets, in seconds: 50 µs (a MappingStorage) to 1 s (a
#: struggling ZEO server); FileStorage's fsync lands in the middle.
COMMIT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                  0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

#: Janitor sweep durations, in seconds: an idle sweep to a huge backlog.
JANITOR_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)

#: Outcomes the publisher answers with 503 Service Unavailable.
UNAVAILABLE_OUTCOMES = frozenset({"gave_up", "outcome_unknown", "storage_error", "session_limit",
                                  "session_wait_timeout"})

EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
OUTCOMES: tuple[str, ...] = get_args(RequestOutcome)

_LIVE_SESSIONS = "zodbsession_live_sessions"
_STORAGE_BYTES = "zodbsession_storage_size_bytes"
_STORAGE_REACHABLE = "zodbsession_storage_reachable"

#: Seconds a scrape or an admin page waits for a figure read from the storage.
STORAGE_READ_TIMEOUT = 2.0


class BoundedReader:
    """Calls *reader* in a thread of its own and waits for it at most *timeout* seconds.

    A storage that hangs (a ZEO server that is frozen, not gone) would hang
    every scrape and admin page that reads from it, blinding the monitoring
    when it is needed most. Past *timeout*, a call raises ``TimeoutError``;
    the read it started goes on in its thread, and later calls wait for that
    same read instead of starting others, so a frozen storage costs one
    thread, not one per scrape. Once the storage answers, reads are fresh.

    Threading: callable from any thread.
    """

    def __init__(self, reader: Callable[[], Any], timeout: float = STORAGE_READ_TIMEOUT) -> None:
        self.reader = reader
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending: Future[Any] | None = None

    def __call__(self) -> Any:
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = Future()
                threading.Thread(target=self._run, args=(self._pending,), daemon=True,
                                 name="zodbsession-storage-read").start()
            pending = self._pending
        return pending.result(self.timeout)

    def _run(self, future: Future[Any]) -> None:
        try:
            future.set_result(self.reader())
        except BaseException as exc:
            future.set_exception(exc)


class PoolFigures(NamedTuple):
    """One database's connection pool: connections checked out now, and its size."""

    in_use: int
    size: int


LiveSessionsReader = Callable[[], int]
PoolReader = Callable[[], Mapping[str, PoolFigures]]
SizeReader = Callable[[], Mapping[str, int]]


# -- the readers of database figures --------------------------------------------------


def count_sessions(db: DB, manager: SessionManager) -> int:
    """The stored sessions, from the container's conflict-free ``Length``: no scan.

    It counts live sessions plus expired ones the janitor has not swept yet
    (at most one janitor interval's worth). One short read-only transaction on
    a connection of its own, loading two or three small records.
    """

    def read(conn: Connection) -> int:
        container = manager.container(conn, create=False)
        return container.count() if container is not None else 0

    with connection(db) as conn:
        return in_transaction(conn, lambda: read(conn), write=False, name="metrics")


def pool_figures(db: DB) -> dict[str, PoolFigures]:
    """Connections checked out of each database's pool, and the pool's size.

    ``connectionDebugInfo()`` lists every connection the pool knows, under the
    database's lock; a connection is in use while ``opened`` is set, which
    ``close()`` clears, for the secondary connections of a multi-database too
    (they are opened and closed along with their primary). Counting
    ``len(db.pool.all)`` instead would include idle connections.
    """
    return {
        name: PoolFigures(
            in_use=sum(1 for info in database.connectionDebugInfo() if info["opened"]),
            size=int(database.getPoolSize()),
        )
        for name, database in sorted(db.databases.items())
    }


def storage_sizes(db: DB) -> dict[str, int]:
    """What each database of *db*'s multi-database reports as its size, in bytes."""
    return {name: int(database.getSize()) for name, database in sorted(db.databases.items())}


# -- multiprocess mode --------------------------------------------------------------------


def multiprocess_enabled() -> bool:
    """Whether prometheus_client writes values to ``PROMETHEUS_MULTIPROC_DIR`` files.

    prometheus_client decides once, when first imported, from the environment.
    """
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


def _check_mode() -> str | None:
    """The multiprocess directory when that mode is on and usable; else None."""
    path = os.environ.get(MULTIPROC_ENV)
    if multiprocess_enabled():
        if not path or not os.path.isdir(path):
            raise ConfigError(MULTIPROC_ENV, f"must name an existing directory (got {path!r})")
        return path
    if path:
        raise ConfigError(
            MULTIPROC_ENV,
            f"was set to {path!r} after prometheus_client had been imported, so each process "
            "would count alone; set it in the environment before the server starts",
        )
    return None


def clear_multiprocess_dir(path: str) -> None:
    """Empty (or make) a multiprocess directory: once, before any worker starts.

    Files left by a previous run would be added to this run's counters.
    """
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


@contextmanager
def claim_multiprocess_dir(path: str) -> Iterator[str]:
    """Hold a multiprocess directory for one server's lifetime: made, locked, then emptied.

    The lock (``flock`` on a ``lock`` file there, which the collector never
    reads) is what stops a second server, pointed at the same directory by
    mistake, from emptying the first one's files and adding its counts to
    them: that one gets a ``ConfigError`` naming the holder's pid. Forked
    workers inherit the lock with the descriptor; it is released when the
    block ends or the last of them exits.
    """
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(MULTIPROC_ENV, f"cannot use {path} for the metrics: "
                          f"{exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            raise ConfigError(MULTIPROC_ENV, f"{path} is in use by another running server (pid "
                              f"{holder}); give each server a directory of its own") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        clear_multiprocess_dir(path)
        yield path
    finally:
        os.close(fd)  # releases the lock, unless forked workers still hold it


def mark_process_dead(pid: int) -> None:
    """Forget a dead worker's per-process gauges (its counters keep counting).

    The supervisor calls it when it reaps worker *pid*; without it that
    worker's last pool figures would be added to the live ones for ever.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        _mark_process_dead(pid, path)


# -- the observer -----------------------------------------------------------------------


class Metrics(Observer):
    """Counts what the manager, publisher and janitor report; renders it for Prometheus.

    Threading: every method may be called from any thread; prometheus_client's
    values are locked. ``start``'s thread only refreshes the pool gauges.

    The readers are optional: *live_sessions* and *storage_bytes* describe the
    database, whichever process reads them, so they are collected at each
    scrape. *pool* describes this process only, so its figures are kept in
    gauges that ``refresh`` sets: ``render`` refreshes the scraping process,
    and in multiprocess mode each worker runs ``start`` to keep its own
    current, their sum being what is scraped.
    """

    def __init__(
        self,
        *,
        live_sessions: LiveSessionsReader | None = None,
        pool: PoolReader | None = None,
        storage_bytes: SizeReader | None = None,
    ) -> None:
        self.multiprocess_dir = _check_mode()
        self._pool_reader = pool
        self._database_collector = _DatabaseCollector(live_sessions, storage_bytes)
        self._registry = CollectorRegistry()  # never the global default one
        counter = partial(Counter, registry=self._registry)
        gauge = partial(Gauge, registry=self._registry)
        histogram = partial(Histogram, registry=self._registry)

        self._events = {kind: counter(f"zodbsession_sessions_{kind}", f"Sessions {kind} (committed events).")
                        for kind in EVENT_KINDS}
        self._requests = counter("zodbsession_requests", "Requests by how they ended.", ["outcome"])
        self._outcomes = {outcome: self._requests.labels(outcome) for outcome in OUTCOMES}
        self._retries = counter("zodbsession_request_retries", "Attempts replayed after a transient error.")
        self._conflicts = counter("zodbsession_request_conflicts", "Replays after a ConflictError.")
        self._unavailable = counter("zodbsession_responses_503", "Requests answered 503 Service Unavailable.")
        self._hook_failures = counter("zodbsession_hook_failures",
                                      "Per-transaction hooks that raised (ignored), by kind.", ["kind"])
        self._commit_seconds = histogram("zodbsession_commit_seconds", "Duration of request commits.",
                                         buckets=COMMIT_BUCKETS)

        self._janitor_runs = counter("zodbsession_janitor_runs", "Janitor sweeps finished.")
        self._janitor_removed = counter("zodbsession_janitor_removed", "Sessions removed by janitor sweeps.")
        self._janitor_seconds = histogram("zodbsession_janitor_seconds", "Duration of janitor sweeps.",
                                          buckets=JANITOR_BUCKETS)
        # One process runs the janitor: across processes the latest value wins.
        self._janitor_last_run = gauge("zodbsession_janitor_last_run_timestamp_seconds",
                                       "When the last janitor sweep finished (Unix time).",
                                       multiprocess_mode="max")
        self._janitor_last_seconds = gauge("zodbsession_janitor_last_seconds",
                                           "Duration of the last janitor sweep.",
                                           multiprocess_mode="mostrecent")
        self._janitor_last_removed = gauge("zodbsession_janitor_last_removed",
                                           "Sessions the last janitor sweep removed.",
                                           multiprocess_mode="mostrecent")
        # Per process: summed over the live processes (mark_process_dead drops a dead one's).
        self._pool_in_use = gauge("zodbsession_pool_connections_in_use",
                                  "Database connections checked out of the pool.", ["database"],
                                  multiprocess_mode="livesum")
        self._pool_size = gauge("zodbsession_pool_size", "Connections each pool keeps.", ["database"],
                                multiprocess_mode="livesum")

        if self.multiprocess_dir is None:
            self._registry.register(self._database_collector)
        self._refresher: Periodic | None = None

    @classmethod
    def for_database(cls, db: DB, manager: SessionManager, *,
                     timeout: float = STORAGE_READ_TIMEOUT) -> Metrics:
        """Metrics whose scrape-time figures come from *db* and *manager*'s container.

        The figures read from the storage wait at most *timeout* seconds
        (``BoundedReader``); a scrape then reports the storage unreachable.
        """
        return cls(live_sessions=BoundedReader(lambda: count_sessions(db, manager), timeout),
                   pool=lambda: pool_figures(db),
                   storage_bytes=BoundedReader(lambda: storage_sizes(db), timeout))

    # -- Observer -------------------------------------------------------------------

    def session_event(self, event: SessionEvent) -> None:
        counter = self._events.get(event.kind)
        if counter is not None:
            counter.inc()

    def request_retried(self, error: BaseException, attempt: int) -> None:
        self._retries.inc()
        if isinstance(error, ConflictError):
            self._conflicts.inc()

    def request_finished(self, outcome: RequestOutcome, attempts: int,
                         commit_seconds: float | None) -> None:
        child = self._outcomes.get(outcome)
        (child if child is not None else self._requests.labels(outcome)).inc()
        if outcome in UNAVAILABLE_OUTCOMES:
            self._unavailable.inc()
        if commit_seconds is not None:
            self._commit_seconds.observe(commit_seconds)

    def hook_failed(self, kind: str, error: BaseException) -> None:
        self._hook_failures.labels(kind).inc()

    def janitor_ran(self, removed: int, seconds: float) -> None:
        self._janitor_runs.inc()
        self._janitor_removed.inc(removed)
        self._janitor_seconds.observe(seconds)
        self._janitor_last_run.set(time.time())
        self._janitor_last_seconds.set(seconds)
        self._janitor_last_removed.set(removed)

    # -- per-process gauges ---------------------------------------------------------

    def refresh(self) -> None:
        """Set the pool gauges from the pool reader; a failing reader is logged."""
        if self._pool_reader is None:
            return
        try:
            figures = self._pool_reader()
        except Exception:
            log.warning("metrics: reading the connection pools failed", exc_info=True)
            return
        for name, pool in figures.items():
            self._pool_in_use.labels(name).set(pool.in_use)
            self._pool_size.labels(name).set(pool.size)

    def start(self, interval: float = 5.0) -> Metrics:
        """Refresh the pool gauges every *interval* seconds on a daemon thread.

        Needed in multiprocess mode, where the scraping process cannot see
        the others' pools; harmless otherwise. Calling it twice does nothing.
        """
        if self._refresher is None:
            self._refresher = Periodic(self.refresh, interval, name="zodbsession-metrics",
                                       immediately=True)
            self._refresher.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the refreshing thread, if running, and wait for it."""
        if self._refresher is not None:
            self._refresher.stop(timeout)
            self._refresher = None

    # -- reading ------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Every metric family now, combined over all processes in multiprocess mode."""
        return iter(self._scrape_registry().collect())

    def render(self) -> bytes:
        """The figures in the Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self._scrape_registry())

    def _scrape_registry(self) -> CollectorRegistry:
        self.refresh()
        if self.multiprocess_dir is None:
            return self._registry
        # Built afresh for each scrape, as prometheus_client's multiprocess guide says.
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=self.multiprocess_dir)
        combined.register(self._database_collector)
        return combined

    def snapshot(self) -> dict[str, Any]:
        """The current figures as plain JSON-ready values, for the admin page and ``stats``.

        Figures whose reader is missing or failed are None (live sessions) or
        absent (per-database mappings).
        """
        return _shape_snapshot(self.collect())


def combined_snapshot(path: str | None = None) -> dict[str, Any]:
    """``Metrics.snapshot()``'s figures as every process wrote them to a multiprocess directory.

    It only reads: the database-wide figures (live sessions, sizes) are not
    in the files, so they are None or absent. *path* defaults to the
    ``PROMETHEUS_MULTIPROC_DIR`` environment variable.
    """
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path or os.environ.get(MULTIPROC_ENV))
    return _shape_snapshot(registry.collect())


def _shape_snapshot(families: Iterable[Metric]) -> dict[str, Any]:
    values: dict[str, dict[frozenset[tuple[str, str]], float]] = {}  # {sample name -> {labels -> value}}
    for family in families:
        for sample in family.samples:
            values.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value

    def one(name: str) -> float | None:
        found = values.get(name, {})
        return found.get(frozenset()) if found else None

    def count(name: str) -> int:
        return int(one(name) or 0)

    def by(name: str, label: str) -> dict[str, float]:
        found = {dict(labels).get(label): value for labels, value in values.get(name, {}).items()}
        return {key: found[key] for key in sorted(k for k in found if k is not None)}

    last_run = one("zodbsession_janitor_last_run_timestamp_seconds")
    in_use, size = by("zodbsession_pool_connections_in_use", "database"), by("zodbsession_pool_size",
                                                                             "database")
    live = one(_LIVE_SESSIONS)
    reachable = one(_STORAGE_REACHABLE)
    requests = {outcome: int(value) for outcome, value in by("zodbsession_requests_total",
                                                             "outcome").items()}
    return {
        "taken_at": time.time(),
        "live_sessions": None if live is None else int(live),
        "storage_reachable": None if reachable is None else bool(reachable),
        "sessions": {kind: count(f"zodbsession_sessions_{kind}_total") for kind in EVENT_KINDS},
        "requests": requests,
        "requests_total": sum(requests.values()),
        "retries": count("zodbsession_request_retries_total"),
        "conflicts": count("zodbsession_request_conflicts_total"),
        "answers_503": count("zodbsession_responses_503_total"),
        "commit_seconds": {"count": count("zodbsession_commit_seconds_count"),
                           "sum": one("zodbsession_commit_seconds_sum") or 0.0},
        "janitor": {
            "runs": count("zodbsession_janitor_runs_total"),
            "removed": count("zodbsession_janitor_removed_total"),
            "seconds_sum": one("zodbsession_janitor_seconds_sum") or 0.0,
            "last_run": last_run or None,  # a gauge never set reads 0
            "last_seconds": one("zodbsession_janitor_last_seconds") if last_run else None,
            "last_removed": count("zodbsession_janitor_last_removed") if last_run else None,
        },
        "pool": {name: {"in_use": int(in_use[name]), "size": int(size.get(name, 0))} for name in in_use},
        "storage_bytes": {name: int(value) for name, value in by(_STORAGE_BYTES, "database").items()},
    }


class _DatabaseCollector:
    """Reads the database-wide figures at scrape time; a failing reader only loses its figure."""

    def __init__(self, live_sessions: LiveSessionsReader | None, storage_bytes: SizeReader | None) -> None:
        self._live_sessions = live_sessions
        self._storage_bytes = storage_bytes

    def describe(self) -> list[Metric]:
        # Called at registration: names only, without touching the database.
        return list(self._families(read=False))

    def collect(self) -> list[Metric]:
        return list(self._families(read=True))

    def _families(self, *, read: bool) -> Iterator[Metric]:
        failed = False
        if self._live_sessions is not None:
            live = _quietly(self._live_sessions, "the session count") if read else None
            failed |= read and live is None
            if live is not None or not read:
                yield GaugeMetricFamily(_LIVE_SESSIONS, "Sessions stored now (the container's conflict-free "
                                        "count): live ones plus expired ones not yet swept.", value=live)
        if self._storage_bytes is not None:
            sizes = _quietly(self._storage_bytes, "the storage sizes") if read else {}
            failed |= read and sizes is None
            if sizes is not None:
                family = GaugeMetricFamily(_STORAGE_BYTES, "Size of each database's storage as it "
                                           "reports it.", labels=["database"])
                for name, size in sizes.items():
                    family.add_metric([name], size)
                yield family
        if self._live_sessions is not None or self._storage_bytes is not None:
            yield GaugeMetricFamily(_STORAGE_REACHABLE, "1 when this scrape's reads from the storage "
                                    "answered in time, 0 when one failed or timed out.",
                                    value=None if not read else (0 if failed else 1))


def _quietly(reader: Callable[[], Any], what: str) -> Any:
    """``reader()``, or None after logging: a scrape must not fail with the storage."""
    try:
        return reader()
    except TimeoutError:
        log.warning("metrics: reading %s: the storage did not answer in time", what)
        return None
    except Exception as exc:
        log.warning("metrics: reading %s failed: %s: %s", what, type(exc).__name__, exc)
        return None
