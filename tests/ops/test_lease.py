"""The janitor lease: one sweeping server among many, decided by the database.

Real ZEO (``zodbsession zeo`` in a child process) with several client
databases in this process, each one a server's view; clocks the tests move.
Two tests read the storage's own transaction history to show that sweep
batches of two holders never interleave; the last one runs three real
``zodbsession serve`` processes and kills the holder.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import transaction
from adminkit import TOKEN, scrape, value
from commitkit import BEFORE, QuietDataManager
from persistent.TimeStamp import TimeStamp
from serverproc import ServerProcess
from ZODB import DB
from ZODB.FileStorage import FileStorage
from ZODB.POSException import ConflictError

from zodbsession.core.db import open_db
from zodbsession.core.manager import SessionManager
from zodbsession.ops.janitor import Janitor
from zodbsession.ops.lease import LEASE_KEY, Lease, LeaseLost
from zodbsession.testing import ManualClock

#: Where the lease tests' clocks (``ManualClock``) begin.
START = 1_000.0


@pytest.fixture
def clients(zeo):
    """Three databases on the one ZEO server: three servers' views of it."""
    dbs = [open_db(zeo.uri(wait_timeout=5)) for _ in range(3)]
    with dbs[0].transaction() as conn:
        SessionManager().container(conn)
    yield dbs
    for db in dbs:
        db.close()


def _holder(db: DB) -> str:
    with db.transaction() as conn:
        lease = conn.root().get(LEASE_KEY)
        return lease.holder if lease is not None else ""


def test_of_three_servers_taking_a_free_lease_at_once_exactly_one_holds_it(clients) -> None:
    leases = [Lease(db, SessionManager(), period=60, holder=f"server-{n}") for n, db in enumerate(clients)]
    start = threading.Barrier(3)
    won: list[bool] = [False] * 3

    def take(n: int) -> None:
        start.wait()
        won[n] = leases[n].acquire()

    threads = [threading.Thread(target=take, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert won.count(True) == 1
    assert _holder(clients[0]) == f"server-{won.index(True)}"
    assert [lease.acquire() for lease in leases] == won, "the holder renews, the others are refused"


def test_a_lapsed_lease_is_taken_over_and_the_old_holder_sweeps_no_more(clients) -> None:
    manager = SessionManager()
    first_clock, second_clock = ManualClock(START), ManualClock(START)
    first = Lease(clients[0], manager, period=10, holder="first", clock=first_clock)
    second = Lease(clients[1], manager, period=10, holder="second", clock=second_clock)
    assert first.acquire()
    second_clock.now += 9.9
    assert not second.acquire(), "not before it lapses"
    second_clock.now += 0.2
    assert second.acquire()
    tm = transaction.TransactionManager(explicit=True)
    conn = clients[0].open(transaction_manager=tm)
    try:
        with first.guard(conn):
            tm.begin()
            conn.root()["swept"] = True
            with pytest.raises(LeaseLost, match="held by second"):
                tm.commit()
            tm.abort()
    finally:
        conn.close()
    with clients[2].transaction() as check:
        assert "swept" not in check.root()


class _TakeOverDuringCommit(QuietDataManager):
    """A data manager that lets another server take the lease between our check and our vote."""

    def __init__(self, take_over) -> None:
        super().__init__(BEFORE)
        self.take_over = take_over

    def tpc_begin(self, txn) -> None:
        worker = threading.Thread(target=self.take_over)
        worker.start()
        worker.join(30)


def test_a_takeover_between_the_check_and_the_vote_makes_the_old_holders_batch_conflict(clients) -> None:
    """readCurrent: the check passed, then the lease changed hands; the batch must not commit."""
    manager = SessionManager()
    clock = ManualClock(START)
    first = Lease(clients[0], manager, period=10, holder="first", clock=clock)
    later = ManualClock(clock.now + 11)
    second = Lease(clients[1], manager, period=10, holder="second", clock=later)
    assert first.acquire()
    tm = transaction.TransactionManager(explicit=True)
    conn = clients[0].open(transaction_manager=tm)
    try:
        with first.guard(conn):
            tm.begin()
            conn.root()["swept"] = True
            tm.get().join(_TakeOverDuringCommit(lambda: second.acquire()))
            with pytest.raises(ConflictError):
                tm.commit()
            tm.abort()
    finally:
        conn.close()
    assert _holder(clients[2]) == "second"
    with clients[2].transaction() as check:
        assert "swept" not in check.root()


def test_a_holder_that_stops_gives_the_lease_up_at_once(clients) -> None:
    manager = SessionManager()
    first = Lease(clients[0], manager, period=600, holder="first")
    second = Lease(clients[1], manager, period=600, holder="second")
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()


def test_three_janitors_sweep_one_at_a_time_and_remove_every_expired_session(tmp_path, zeo, clients):
    """Sessions expire in three waves; after each wave the holder stops and another takes over.

    The storage's history then shows every sweep batch committed by the
    holder of the lease taken last before it: never by two at once.
    """
    clock = ManualClock(time.time())
    manager = SessionManager(idle_timeout=60, access_resolution=10, clock=clock)
    # The leases' clock stands still: a grant never lapses, so the lease changes
    # hands only when its holder stops, whatever the machine's load. (On the wall
    # clock, with a short period, a janitor starved for one period under load
    # lost the lease mid-wave, again and again; lapses have tests of their own.)
    lease_clock = ManualClock(time.time())
    janitors = {f"janitor-{n}": Janitor(db, manager, interval=0.05, batch_size=20,
                                        lease=Lease(db, manager, period=60, holder=f"janitor-{n}",
                                                    clock=lease_clock))
                for n, db in enumerate(clients)}
    for janitor in janitors.values():
        janitor.start()
    holders = []
    try:
        for _wave in range(3):
            with clients[0].transaction() as conn:
                for _ in range(100):
                    manager.new(conn)["x"] = 1
            clock.now += 100  # the wave is expired, its 10-second expiry slots included
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with clients[0].transaction() as conn:
                    if len(manager.container(conn)) == 0:
                        break
                time.sleep(0.05)
            holders.append(_holder(clients[0]))
            janitors[holders[-1]].stop()  # gives the lease up: another takes the next wave
    finally:
        for janitor in janitors.values():
            janitor.stop()
    with clients[0].transaction() as conn:
        assert len(manager.container(conn)) == 0
    assert len(set(holders)) == 3, holders
    zeo.stop()
    holder = None
    swept_by: set[str] = set()
    for txn in FileStorage(str(tmp_path / "Data.fs"), read_only=True).iterator():
        note = txn.description.decode()
        if "janitor lease taken by " in note:
            holder = note.rsplit(" ", 1)[1]
        elif "janitor sweep by " in note:
            swept_by.add(holder)
            assert note.rsplit(" ", 1)[1] == holder, f"a batch of a non-holder committed: {note}"
    assert swept_by == set(holders)


# -- real servers ----------------------------------------------------------------------------

#: The janitor interval of the servers below; the lease is three of them (the default).
#: A takeover is due one lease period after the kill plus one interval at most; the
#: bound of two periods leaves 2 s for a loaded machine's scheduling.
INTERVAL = 1.0
PERIOD = 3 * INTERVAL


def _janitor_runs(servers: list[ServerProcess]) -> list[float]:
    return [value(scrape(server), "zodbsession_janitor_runs_total") for server in servers]


def _wait_for(condition, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(step)
    raise AssertionError(f"{what} within {timeout} s")


def test_three_servers_elect_one_janitor_and_another_takes_over_when_it_is_killed(tmp_path: Path, zeo):
    """Three ``zodbsession serve`` on one ZEO server: nobody is told to sweep or not (short timings only).

    Only the lease holder sweeps (its ``zodbsession_janitor_runs_total``
    grows, the others' stay 0); SIGKILLed, it is replaced within two lease
    periods, measured by the ZEO server's own clock on the takeover's
    transaction; and the storage's history shows the lease taken twice, by
    the killed server and then its successor, with every renewal and sweep
    batch in between by the holder of the time.
    """
    env = {"ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=5),
           "ZODBSESSION_JANITOR_INTERVAL": str(INTERVAL)}
    servers = [ServerProcess(tmp_path, env, admin_token=TOKEN) for _ in range(3)]
    with servers[0], servers[1], servers[2]:
        def three_sweeps() -> list[float] | None:
            runs = _janitor_runs(servers)
            return runs if max(runs) >= 3 else None

        runs = _wait_for(three_sweeps, 30, "no server swept three times")
        assert sorted(runs)[:2] == [0, 0], f"more than one server sweeps: {runs}"
        holder = servers[runs.index(max(runs))]
        others = [server for server in servers if server is not holder]
        holder.kill()
        killed_at = time.time()
        before = _janitor_runs(others)

        def new_sweeper() -> ServerProcess | None:
            now = _janitor_runs(others)
            return next((s for s, n, b in zip(others, now, before, strict=True) if n > b), None)

        # Waiting is not the bound (the storage's clock below is): only a hang fails here.
        successor = _wait_for(new_sweeper, 30, "nobody took the lease over")
        bystander = next(server for server in others if server is not successor)
        _wait_for(lambda: _janitor_runs([successor])[0] >= 3, 30, "the successor did not sweep on")
        assert _janitor_runs([bystander]) == [0], "the third server swept too"
        # Stopping gives the lease up, and a server stopped later takes it: not counted.
        stopping_at = time.time()
    zeo.stop()
    taken: list[tuple[float, int]] = []  # (when, the taker's pid)
    renewed: dict[int, int] = {}  # {pid -> renewals}
    for txn in FileStorage(str(tmp_path / "Data.fs"), read_only=True).iterator():
        note = txn.description.decode()
        if " by " not in note or TimeStamp(txn.tid).timeTime() >= stopping_at:
            continue
        pid = int(note.rsplit(" ", 1)[1].split(":")[1])  # the holder is host:pid:tag
        if "janitor lease taken by " in note:
            taken.append((TimeStamp(txn.tid).timeTime(), pid))
        elif "janitor lease renewed by " in note or "janitor sweep by " in note:
            assert taken and pid == taken[-1][1], f"not by the holder of the time: {note}"
            renewed[pid] = renewed.get(pid, 0) + ("renewed" in note)
    assert [pid for _, pid in taken] == [holder.process.pid, successor.process.pid]
    assert renewed.get(holder.process.pid, 0) >= 2 and renewed.get(successor.process.pid, 0) >= 2, renewed
    takeover = taken[1][0] - killed_at
    print(f"\ntaken over {takeover:.2f} s after the kill (bound {2 * PERIOD:g} s); renewals {renewed}")
    assert takeover <= 2 * PERIOD, f"taken over {takeover:.2f} s after the kill"
