"""Crashes and storage faults, with real processes and a real FileStorage: nothing mocked.

- SIGKILL of ``zodbsession serve`` under a write load, several times: after
  each restart every increment a client saw acknowledged is there, the file
  opens without repair, and ZODB's own checkers (through ``zodbsession
  verify``) call it sound.
- A write that the file system refuses at commit time (the file may not
  grow: ``RLIMIT_FSIZE``, which fails the write with ``EFBIG`` exactly as a
  full disk fails it with ``ENOSPC``) answers 503, leaves the file as it was,
  and the server goes on once the file may grow again.
"""

from __future__ import annotations

import random
import resource
import threading
import time

import pytest
from serverproc import Client, ServerProcess
from stresskit import Writer, assert_sound, counter_app_env, run_writers

WRITERS = 4


def server_env(tmp_path) -> dict[str, str]:
    return {**counter_app_env(tmp_path), "ZODBSESSION_STORAGE_URI": "file://var/Data.fs"}


@pytest.mark.parametrize("kills", [3, pytest.param(20, marks=pytest.mark.slow)],
                         ids=["3-kills", "20-kills"])
def test_sigkill_under_write_load_loses_no_acknowledged_write(tmp_path, kills):
    """What is guaranteed, per client (each sends one request at a time): after a
    kill the stored count is exactly the last acknowledged count, or one more
    if a request was in flight (committed and fsynced, but killed before it
    answered). Over the run: final = acknowledged + those committed-unanswered."""
    env = server_env(tmp_path)
    server = ServerProcess(tmp_path, env).start()
    writers = [Writer(Client(server.url)) for _ in range(WRITERS)]
    try:
        for writer in writers:
            writer.start_session()
        for _ in range(kills):
            stop_at = random.uniform(0.3, 1.2)
            killer = _kill_after(server, stop_at)
            run_writers(writers, stop_at + 0.5)  # the writers end when the server dies
            killer.join()
            assert server.process.returncode == -9
            server.start()  # opens the file as the kill left it: no repair step
            for writer in writers:
                writer.check_after_restart()
            # verify takes the file's lock, as every command does: stop the
            # server that reopened the killed file (cutting off any torn tail),
            # check it, and serve on.
            server.stop()
            assert_sound(tmp_path, env)
            server.start()
        finals = [writer.stored() for writer in writers]
    finally:
        server.stop()
    assert_sound(tmp_path, env)
    for writer, final in zip(writers, finals, strict=True):
        assert writer.problems == []
        assert set(writer.statuses) <= {200}, writer.statuses
        assert final == writer.acknowledged_total + writer.committed_unanswered
        assert writer.committed_unanswered <= kills
    acknowledged = sum(w.acknowledged_total for w in writers)
    unanswered = sum(w.committed_unanswered for w in writers)
    print(f"\n{kills} kills: {acknowledged} increments acknowledged, {unanswered} committed "
          "but killed before the answer; none lost")
    assert acknowledged > 20 * kills


def _kill_after(server: ServerProcess, seconds: float) -> threading.Thread:
    def kill() -> None:
        time.sleep(seconds)
        server.kill()

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_a_write_the_disk_refuses_answers_503_and_the_storage_recovers(tmp_path):
    """The server's file may not grow (its RLIMIT_FSIZE is lowered from outside with
    prlimit; Python ignores SIGXFSZ, so the write fails with EFBIG): a write answers
    503, reads go on, nothing of the refused writes is committed; once the file may
    grow again (no restart), writes succeed; after a restart, verify calls the file
    sound and every acknowledged write is there.

    Why the restart: when the refused write is the vote's final flush, ZODB's
    FileStorage cannot cut it off (the buffered file's truncate flushes first,
    and fails again), so unfinished bytes can sit past the last transaction
    until the next open, which cuts them off by itself (into Data.fs.tr<n>).
    They are never read: the storage's index and end position exclude them.
    """
    env = {**server_env(tmp_path), "ZODBSESSION_JANITOR_INTERVAL": "0"}
    _pad_the_database(tmp_path)  # larger than any log line the server writes meanwhile
    data_fs = tmp_path / "var" / "Data.fs"
    with ServerProcess(tmp_path, env) as server:
        browser = Client(server.url)
        assert browser.json("POST", "/") == (200, {"n": 1, "attempt": 1})
        pid = server.process.pid
        unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        size = data_fs.stat().st_size
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (size + 64, unlimited[1]))
        try:
            for _ in range(3):
                status, headers, body = browser.request("POST", "/")
                assert status == 503, body
                assert headers["Retry-After"] == "5"
                assert b"cannot store changes now" in body
            assert browser.json("GET", "/") == (200, {"n": 1, "attempt": 1})
            assert data_fs.stat().st_size <= size + 64
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)
        assert browser.json("POST", "/") == (200, {"n": 2, "attempt": 1})
        assert browser.json("POST", "/") == (200, {"n": 3, "attempt": 1})
    log = server.log()
    assert log.count("the storage could not write the commit: [Errno 27] File too large") == 3
    assert "the request raised" not in log
    with ServerProcess(tmp_path, env) as server:  # opening cuts off what the refusal left
        assert browser.sharing_cookies(server.url).json("GET", "/") == (200, {"n": 3, "attempt": 1})
        assert browser.sharing_cookies(server.url).json("POST", "/")[1]["n"] == 4
    assert_sound(tmp_path, env)


def _pad_the_database(tmp_path) -> None:
    """A Data.fs of about 1 MB, so that the size limit set on it binds no log file."""
    from persistent.mapping import PersistentMapping

    from zodbsession import open_db

    (tmp_path / "var").mkdir()
    db = open_db(f"file://{tmp_path}/var/Data.fs")
    try:
        with db.transaction() as conn:
            conn.root()["padding"] = PersistentMapping(blob=b"\0" * 1_000_000)
    finally:
        db.close()
