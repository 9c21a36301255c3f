"""``Metrics``: exact figures from the rendered Prometheus text, real databases, real processes.

Every figure is read back by parsing ``render()``'s output with
prometheus_client's own parser, so the tests pin what a Prometheus server
would store, not our internal state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import transaction
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from transaction.interfaces import TransientError
from ZODB import DB
from ZODB.FileStorage import FileStorage
from ZODB.POSException import ConflictError, ReadConflictError

from zodbsession.core.db import open_db
from zodbsession.core.errors import ConfigError
from zodbsession.core.manager import SessionManager
from zodbsession.core.observe import Observers, SessionEvent
from zodbsession.ops.metrics import (
    MULTIPROC_ENV,
    Metrics,
    PoolFigures,
    claim_multiprocess_dir,
    clear_multiprocess_dir,
    count_sessions,
    pool_figures,
    storage_sizes,
)

Figures = dict[tuple[str, frozenset[tuple[str, str]]], float]


def figures(text: bytes | str) -> Figures:
    """Every sample of a Prometheus text, keyed by (sample name, labels)."""
    if isinstance(text, bytes):
        text = text.decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: Figures, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def event(kind: str, n: int = 0) -> SessionEvent:
    return SessionEvent(kind, f"{n:043d}", None, time.time())  # type: ignore[arg-type]


def store_sessions(db: DB, manager: SessionManager, count: int) -> list[str]:
    """Store *count* sessions, each with one data key, in one transaction."""
    with db.transaction() as conn:
        ids = []
        for _ in range(count):
            session = manager.new(conn)
            session["data"] = "x"
            ids.append(session.id)
    return ids


@pytest.fixture
def hub_and_metrics() -> tuple[Observers, Metrics]:
    hub = Observers()
    metrics = Metrics()
    hub.subscribe(metrics)
    return hub, metrics


def test_session_events_are_counted_by_kind(hub_and_metrics):
    hub, metrics = hub_and_metrics
    expected = {"created": 5, "rotated": 3, "invalidated": 2, "expired": 7, "revoked": 1,
                "evicted": 0}
    for kind, times in expected.items():
        for n in range(times):
            hub.session_event(event(kind, n))
    found = figures(metrics.render())
    for kind, times in expected.items():
        assert value(found, f"zodbsession_sessions_{kind}_total") == times
    assert metrics.snapshot()["sessions"] == expected


def test_requests_are_counted_by_outcome_and_503s_separately(hub_and_metrics):
    hub, metrics = hub_and_metrics
    outcomes = (["committed"] * 6 + ["aborted_exception"] * 2 + ["aborted_veto"]
                + ["gave_up"] * 3 + ["storage_error", "outcome_unknown", "session_limit"])
    for outcome in outcomes:
        hub.request_finished(outcome, 1, None)  # type: ignore[arg-type]
    found = figures(metrics.render())
    assert value(found, "zodbsession_requests_total", outcome="committed") == 6
    assert value(found, "zodbsession_requests_total", outcome="aborted_exception") == 2
    assert value(found, "zodbsession_requests_total", outcome="aborted_veto") == 1
    assert value(found, "zodbsession_requests_total", outcome="aborted_invalid") == 0
    assert value(found, "zodbsession_requests_total", outcome="gave_up") == 3
    assert value(found, "zodbsession_responses_503_total") == 6
    snap = metrics.snapshot()
    assert snap["requests_total"] == len(outcomes)
    assert snap["answers_503"] == 6


def test_retries_count_every_transient_error_and_conflicts_only_conflicts(hub_and_metrics):
    hub, metrics = hub_and_metrics
    hub.request_retried(ConflictError(), 1)
    hub.request_retried(ReadConflictError(), 2)
    hub.request_retried(TransientError(), 1)
    found = figures(metrics.render())
    assert value(found, "zodbsession_request_retries_total") == 3
    assert value(found, "zodbsession_request_conflicts_total") == 2


def test_commit_latency_lands_in_buckets_from_50_microseconds_to_1_second(hub_and_metrics):
    hub, metrics = hub_and_metrics
    for seconds in (0.00004, 0.0003, 0.004, 0.3, 2.0):
        hub.request_finished("committed", 1, seconds)
    hub.request_finished("aborted_exception", 1, None)  # no commit ran: not observed
    found = figures(metrics.render())
    bucket = "zodbsession_commit_seconds_bucket"
    assert value(found, bucket, le="5e-05") == 1
    assert value(found, bucket, le="0.0005") == 2
    assert value(found, bucket, le="0.005") == 3
    assert value(found, bucket, le="0.5") == 4
    assert value(found, bucket, le="1.0") == 4
    assert value(found, bucket, le="+Inf") == 5
    assert value(found, "zodbsession_commit_seconds_count") == 5
    assert value(found, "zodbsession_commit_seconds_sum") == pytest.approx(2.30434)


def test_janitor_runs_keep_totals_and_the_last_run(hub_and_metrics):
    hub, metrics = hub_and_metrics
    before = time.time()
    hub.janitor_ran(3, 0.25)
    hub.janitor_ran(0, 0.002)
    found = figures(metrics.render())
    assert value(found, "zodbsession_janitor_runs_total") == 2
    assert value(found, "zodbsession_janitor_removed_total") == 3
    assert value(found, "zodbsession_janitor_seconds_count") == 2
    assert value(found, "zodbsession_janitor_seconds_sum") == pytest.approx(0.252)
    assert value(found, "zodbsession_janitor_last_seconds") == pytest.approx(0.002)
    assert value(found, "zodbsession_janitor_last_removed") == 0
    assert before <= value(found, "zodbsession_janitor_last_run_timestamp_seconds") <= time.time()
    janitor = metrics.snapshot()["janitor"]
    assert (janitor["runs"], janitor["removed"], janitor["last_removed"]) == (2, 3, 0)


def test_no_janitor_run_yet_reads_as_none_in_the_snapshot():
    assert Metrics().snapshot()["janitor"]["last_run"] is None


def test_live_sessions_are_the_containers_count_read_without_a_scan(tmp_path, load_counter):
    """The scrape reads the Length and its container, never a session, however many there are."""
    storage = FileStorage(str(tmp_path / "Data.fs"))
    counter = load_counter(storage)
    db = DB(storage)
    try:
        manager = SessionManager()
        store_sessions(db, manager, 40)
        metrics = Metrics.for_database(db, manager)
        db.cacheMinimize()
        counter.active = True
        assert value(figures(metrics.render()), "zodbsession_live_sessions") == 40
        # The root, the container and its Length: no bucket of the id tree, no session.
        assert set(counter.by_class) == {"PersistentMapping", "SessionContainer", "Length"}
        assert metrics.snapshot()["live_sessions"] == 40
    finally:
        db.close()


def test_live_sessions_of_an_empty_database_are_zero(memory_db):
    assert count_sessions(memory_db, SessionManager()) == 0
    assert value(figures(Metrics.for_database(memory_db, SessionManager()).render()),
                 "zodbsession_live_sessions") == 0


def test_live_sessions_come_from_the_sessions_database_of_a_multi_database():
    db = open_db("memory://", sessions_uri="memory://")
    try:
        manager = SessionManager(database="sessions")
        with db.transaction() as conn:
            for _ in range(3):
                manager.new(conn)["k"] = 1
        assert count_sessions(db, manager) == 3
    finally:
        db.close()


def test_pool_figures_count_the_connections_checked_out(memory_db):
    metrics = Metrics.for_database(memory_db, SessionManager())
    first = memory_db.open(transaction.TransactionManager())
    second = memory_db.open(transaction.TransactionManager())
    try:
        found = figures(metrics.render())
        assert value(found, "zodbsession_pool_connections_in_use", database="unnamed") == 2
        assert value(found, "zodbsession_pool_size", database="unnamed") == memory_db.getPoolSize()
    finally:
        first.close()
        second.close()
    assert value(figures(metrics.render()), "zodbsession_pool_connections_in_use", database="unnamed") == 0


def test_pool_figures_of_a_multi_database_follow_the_primary_connection():
    """A sessions connection is in use while the main connection it rides with is."""
    db = open_db("memory://", sessions_uri="memory://")
    try:
        conn = db.open(transaction.TransactionManager())
        conn.get_connection("sessions")
        assert pool_figures(db) == {"main": PoolFigures(1, 7), "sessions": PoolFigures(1, 7)}
        conn.close()
        assert pool_figures(db) == {"main": PoolFigures(0, 7), "sessions": PoolFigures(0, 7)}
        conn = db.open(transaction.TransactionManager())  # the same one, its secondary attached
        assert pool_figures(db)["sessions"].in_use == 1
        conn.close()
    finally:
        db.close()


def test_storage_size_is_reported_per_database_as_the_files_length(tmp_path):
    main, sessions = tmp_path / "Data.fs", tmp_path / "Sessions.fs"
    db = open_db(f"file://{main}", sessions_uri=f"file://{sessions}")
    try:
        store_sessions(db, SessionManager(database="sessions"), 5)
        found = figures(Metrics.for_database(db, SessionManager(database="sessions")).render())
        for name, path in (("main", main), ("sessions", sessions)):
            assert value(found, "zodbsession_storage_size_bytes", database=name) == os.path.getsize(path)
        assert storage_sizes(db)["sessions"] > storage_sizes(db)["main"]
    finally:
        db.close()


def test_a_failing_reader_loses_only_its_own_figure(caplog):
    def broken() -> int:
        raise OSError("storage gone")

    metrics = Metrics(live_sessions=broken, storage_bytes=lambda: {"main": 10},
                      pool=lambda: {"main": PoolFigures(1, 7)})
    metrics.request_finished("committed", 1, None)
    found = figures(metrics.render())
    assert not any(name == "zodbsession_live_sessions" for name, _ in found)
    assert value(found, "zodbsession_storage_size_bytes", database="main") == 10
    assert value(found, "zodbsession_requests_total", outcome="committed") == 1
    assert metrics.snapshot()["live_sessions"] is None
    assert "storage gone" in caplog.text


def test_each_metrics_counts_alone_and_never_in_the_global_registry():
    first, second = Metrics(), Metrics()
    first.request_finished("committed", 1, None)
    assert value(figures(first.render()), "zodbsession_requests_total", outcome="committed") == 1
    assert value(figures(second.render()), "zodbsession_requests_total", outcome="committed") == 0
    assert not any(name.startswith("zodbsession") for name in REGISTRY._names_to_collectors)


def test_events_from_a_real_manager_are_counted(db):
    """The manager reports committed lifecycle events to ``manager.observers`` (issue #8)."""
    manager = SessionManager()
    hub = getattr(manager, "observers", None)
    if hub is None:
        pytest.skip("SessionManager has no observers hub yet (issue #8, the wiring phase)")
    metrics = Metrics.for_database(db, manager)
    hub.subscribe(metrics)
    ids = store_sessions(db, manager, 3)
    with db.transaction() as conn:
        manager.rotate(manager.get(conn, ids[0]))
        manager.revoke(conn, ids[1])
    snap = metrics.snapshot()
    assert snap["sessions"]["created"] == 3
    assert snap["sessions"]["rotated"] == 1
    assert snap["sessions"]["revoked"] == 1
    assert snap["live_sessions"] == 2


def test_start_refreshes_the_pool_gauges_on_a_thread():
    calls: list[float] = []

    def pool() -> dict[str, PoolFigures]:
        calls.append(time.monotonic())
        return {"main": PoolFigures(len(calls), 7)}

    metrics = Metrics(pool=pool).start(interval=0.02)
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        metrics.stop()
    assert len(calls) >= 3
    settled = len(calls)
    time.sleep(0.1)
    assert len(calls) == settled  # stopped


def test_setting_the_multiprocess_directory_too_late_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=MULTIPROC_ENV) as info:
        Metrics()
    assert "before the server starts" in str(info.value)


def test_clearing_the_multiprocess_directory_removes_old_values_only(tmp_path):
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("keep")
    clear_multiprocess_dir(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    clear_multiprocess_dir(str(tmp_path / "new"))
    assert (tmp_path / "new").is_dir()


def test_a_claimed_multiprocess_directory_is_emptied_and_refused_to_a_second_server(tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"a previous run's")
    with claim_multiprocess_dir(str(directory)):
        assert sorted(p.name for p in directory.iterdir()) == ["lock"]
        (directory / "counter_456.db").write_bytes(b"this run's")
        with pytest.raises(ConfigError) as info, claim_multiprocess_dir(str(directory)):
            pass  # pragma: no cover
        assert info.value.key == MULTIPROC_ENV
        assert f"in use by another running server (pid {os.getpid()})" in str(info.value)
        assert (directory / "counter_456.db").exists()  # the refused claim emptied nothing
    with claim_multiprocess_dir(str(directory)):  # free again once released
        assert not (directory / "counter_456.db").exists()


def test_a_multiprocess_directory_that_cannot_be_made_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"cannot use .*file/metrics for the metrics"), \
            claim_multiprocess_dir(str(tmp_path / "file" / "metrics")):
        pass  # pragma: no cover


# -- several processes ---------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import os, sys
    from ZODB.POSException import ConflictError
    from zodbsession.ops.metrics import Metrics, PoolFigures
    from zodbsession.core.observe import Observers, SessionEvent

    n = int(sys.argv[1])
    hub = Observers()
    metrics = Metrics(pool=lambda: {"main": PoolFigures(n, 7)})
    hub.subscribe(metrics)
    for i in range(n):
        hub.session_event(SessionEvent("created", str(i) * 43, None, 0.0))
        hub.request_finished("committed", 1, 0.001 * n)
    hub.request_finished("gave_up", 5, None)
    hub.request_retried(ConflictError(), 1)
    hub.janitor_ran(n, 0.1 * n)
    metrics.refresh()
    print("ready", os.getpid(), flush=True)
    sys.stdin.readline()  # live until told to exit
""")

RENDER = textwrap.dedent("""
    import sys
    from zodbsession.ops.metrics import Metrics, mark_process_dead

    for pid in sys.argv[1:]:
        mark_process_dead(int(pid))
    sys.stdout.buffer.write(Metrics().render())
""")


READ_ONLY = textwrap.dedent("""
    import json
    from zodbsession.ops.metrics import combined_snapshot

    print(json.dumps(combined_snapshot()))
""")


def test_the_figures_of_two_worker_processes_are_combined(tmp_path: Path):
    """Two real processes write to one multiprocess directory; a third renders their sum.

    Counters and histograms add up, the pool gauges add up over the live
    processes only, and a dead worker's counters still count.
    """
    directory = tmp_path / "multiproc"
    clear_multiprocess_dir(str(directory))
    env = {**os.environ, MULTIPROC_ENV: str(directory)}
    workers = []
    try:
        for n in (2, 3):  # one after the other: the second's janitor run is the most recent
            worker = subprocess.Popen([sys.executable, "-c", WORKER, str(n)], env=env, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            workers.append(worker)
            assert worker.stdout is not None
            assert worker.stdout.readline().startswith("ready")

        def render(*dead: int) -> Figures:
            result = subprocess.run([sys.executable, "-c", RENDER, *map(str, dead)], env=env,
                                    capture_output=True, check=True, timeout=60)
            return figures(result.stdout)

        found = render()
        assert value(found, "zodbsession_sessions_created_total") == 5
        assert value(found, "zodbsession_requests_total", outcome="committed") == 5
        assert value(found, "zodbsession_requests_total", outcome="gave_up") == 2
        assert value(found, "zodbsession_responses_503_total") == 2
        assert value(found, "zodbsession_request_retries_total") == 2
        assert value(found, "zodbsession_request_conflicts_total") == 2
        assert value(found, "zodbsession_commit_seconds_count") == 5
        assert value(found, "zodbsession_commit_seconds_sum") == pytest.approx(2 * 0.002 + 3 * 0.003)
        assert value(found, "zodbsession_commit_seconds_bucket", le="0.0025") == 2
        assert value(found, "zodbsession_janitor_runs_total") == 2
        assert value(found, "zodbsession_janitor_removed_total") == 5
        assert value(found, "zodbsession_janitor_last_removed") == 3
        assert value(found, "zodbsession_pool_connections_in_use", database="main") == 5
        assert value(found, "zodbsession_pool_size", database="main") == 14

        files = sorted(directory.iterdir())
        reader = subprocess.run([sys.executable, "-c", READ_ONLY], env=env, capture_output=True,
                                check=True, timeout=60, text=True)
        snap = json.loads(reader.stdout)
        assert (snap["requests"]["committed"], snap["conflicts"], snap["answers_503"]) == (5, 2, 2)
        assert snap["pool"] == {"main": {"in_use": 5, "size": 14}}
        assert snap["live_sessions"] is None
        assert sorted(directory.iterdir()) == files  # the reader wrote nothing

        first = workers[0]
        first.communicate("\n", timeout=60)
        found = render(first.pid)
        assert value(found, "zodbsession_pool_connections_in_use", database="main") == 3
        assert value(found, "zodbsession_pool_size", database="main") == 7
        assert value(found, "zodbsession_requests_total", outcome="committed") == 5
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.communicate("\n", timeout=60)
