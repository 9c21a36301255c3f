"""Group commit under crashes and simulated power cuts, with real server processes and files.

Each round runs writers against ``zodbsession serve`` (FileStorage with
group commit), SIGKILLs it after 1 to 3 s, and then, in a power-cut round,
damages the file the way a power cut can: only past the offset the server
last reported synced (``Data.fs.synced``), since everything before it was
fsynced. The damage is one of: the file cut short at a random point, zeros
from a random point to the end, garbage from a random point to the end, or
a zeroed 4 KiB page in the middle of the unsynced tail. The server must
start each time, every acknowledged increment must be there (a commit is
acknowledged, and seen by any reader, only once synced), and ``zodbsession
verify`` (fstest, references, BTrees) must call the file sound.

With ``storage.fsync = "interval"`` kills are survived without loss (the
page cache keeps what the process wrote); a power cut may lose what was
written after the last periodic fsync, and only that: the relaxed test reads
each session's count from a copy of the file cut at the synced offset (the
state the disk is known to hold) and checks that the restarted server shows
at least that count, at most what was acknowledged, and a sound file.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from serverproc import Client, ServerProcess
from stresskit import Writer, assert_sound, counter_app_env, run_writers
from ZODB import DB
from ZODB.FileStorage import FileStorage

from zodbsession.core.groupcommit import read_synced_offset
from zodbsession.core.store import get_container

WRITERS = 4
TEARS = ("truncate", "zeros", "garbage", "hole")


def _env(tmp_path, fsync: str) -> dict[str, str]:
    return {**counter_app_env(tmp_path), "ZODBSESSION_STORAGE_URI": "file://var/Data.fs",
            "ZODBSESSION_STORAGE_FSYNC": fsync, "ZODBSESSION_JANITOR_INTERVAL": "0"}


def tear(path: str, rng: random.Random) -> tuple[str, int]:
    """Damage *path* past its synced offset as a power cut may; (how, bytes past the offset)."""
    synced = read_synced_offset(path)
    assert synced is not None, "the server reported no synced offset"
    size = os.path.getsize(path)
    assert synced <= size, (synced, size)
    if size == synced:
        return "nothing unsynced", 0
    start = rng.randrange(synced, size)
    how = rng.choice(TEARS)
    with open(path, "r+b") as data:
        if how == "truncate":
            data.truncate(start)
        elif how == "zeros":
            data.seek(start)
            data.write(b"\0" * (size - start))
        elif how == "garbage":
            data.seek(start)
            data.write(rng.randbytes(size - start))
        else:
            data.seek(start)
            data.write(b"\0" * min(4096, size - start))
    return how, size - synced


@pytest.mark.parametrize(("fsync", "rounds", "power_cuts"), [
    ("always", 3, True),
    ("interval", 2, False),
    pytest.param("always", 25, True, marks=pytest.mark.slow),
    pytest.param("interval", 25, False, marks=pytest.mark.slow),
], ids=["always-3", "interval-kill-2", "always-25", "interval-kill-25"])
def test_kills_and_power_cuts_lose_no_acknowledged_write(tmp_path, fsync, rounds, power_cuts):
    rng = random.Random()
    env = _env(tmp_path, fsync)
    data_fs = str(tmp_path / "var" / "Data.fs")
    server = ServerProcess(tmp_path, env).start()
    writers = [Writer(Client(server.url)) for _ in range(WRITERS)]
    damage: list[tuple[str, int]] = []
    try:
        for writer in writers:
            writer.start_session()
        for round_number in range(rounds):
            stop_at = rng.uniform(1.0, 3.0)
            killer = threading.Thread(target=lambda s=stop_at: (time.sleep(s), server.kill()),
                                      daemon=True)
            killer.start()
            run_writers(writers, stop_at + 0.5)  # the writers end when the server dies
            killer.join()
            assert server.process.returncode == -9
            if power_cuts and round_number % 4 != 3:  # every fourth round a plain kill
                damage.append(tear(data_fs, rng))
            server.start()  # must open whatever the cut left
            for writer in writers:
                writer.check_after_restart()
            server.stop()
            assert_sound(tmp_path, env)
            server.start()
        finals = [writer.stored() for writer in writers]
    finally:
        server.stop()
    assert_sound(tmp_path, env)
    for writer, final in zip(writers, finals, strict=True):
        assert writer.problems == [], (writer.problems, damage)
        assert set(writer.statuses) <= {200}, writer.statuses
        assert final == writer.acknowledged_total + writer.committed_unanswered
    acknowledged = sum(w.acknowledged_total for w in writers)
    print(f"\n{rounds} kills ({fsync}): {acknowledged} increments acknowledged, none lost; "
          f"damage past the synced offset: {damage}")
    assert acknowledged > 20 * rounds


def counts_on_disk(path: str, offset: int, session_ids: list[str], workdir) -> list[int]:
    """Each session's count in the state *path* held at *offset*: a copy cut there, opened read-only."""
    copy = str(workdir / "synced-copy.fs")
    with open(path, "rb") as source, open(copy, "wb") as target:
        target.write(source.read(offset))
    db = DB(FileStorage(copy, read_only=True))
    try:
        with db.transaction() as conn:
            container = get_container(conn, create=False)
            assert container is not None, "nothing synced at all"
            return [container.sessions[i]["n"] if i in container.sessions else 0
                    for i in session_ids]
    finally:
        db.close()
        for name in os.listdir(workdir):
            if name.startswith("synced-copy.fs"):
                os.remove(workdir / name)


@pytest.mark.parametrize("rounds", [2, pytest.param(25, marks=pytest.mark.slow)])
def test_relaxed_power_cut_loses_only_writes_after_the_last_periodic_fsync(tmp_path, rounds):
    rng = random.Random()
    env = {**_env(tmp_path, "interval"), "ZODBSESSION_STORAGE_FSYNC_INTERVAL": "0.2"}
    data_fs = str(tmp_path / "var" / "Data.fs")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    server = ServerProcess(tmp_path, env).start()
    writers = [Writer(Client(server.url)) for _ in range(WRITERS)]
    lost: list[int] = []
    try:
        for writer in writers:
            writer.start_session()
        ids = [writer.client.cookie() for writer in writers]
        assert all(ids), ids
        for _round_number in range(rounds):
            stop_at = rng.uniform(1.0, 3.0)
            killer = threading.Thread(target=lambda s=stop_at: (time.sleep(s), server.kill()),
                                      daemon=True)
            killer.start()
            run_writers(writers, stop_at + 0.5)
            killer.join()
            assert server.process.returncode == -9
            synced = read_synced_offset(data_fs)
            assert synced is not None, "the periodic fsync never recorded an offset"
            on_disk = counts_on_disk(data_fs, synced, ids, scratch)
            tear(data_fs, rng)
            server.start()
            for writer, durable in zip(writers, on_disk, strict=True):
                stored = writer.stored()
                most = writer.acknowledged + (1 if writer.in_flight else 0)
                assert durable <= stored <= most, (durable, stored, writer.acknowledged)
                lost.append(max(0, writer.acknowledged - stored))
                writer.acknowledged, writer.in_flight = stored, False
            server.stop()
            assert_sound(tmp_path, env)
            server.start()
    finally:
        server.stop()
    assert_sound(tmp_path, env)
    for writer in writers:
        assert set(writer.statuses) <= {200}, writer.statuses
    print(f"\n{rounds} power cuts (interval 0.2 s): acknowledged writes lost per session and "
          f"round: {lost}")
