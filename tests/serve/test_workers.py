"""``zodbsession serve --workers N``: a pre-fork supervisor, driven as real processes on loopback."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from serverproc import (
    Client,
    ServerProcess,
    alive,
    free_port,
    pid_app_env,
    post_until_pids,
    run_cli,
    wait_for,
)


@pytest.fixture
def env(tmp_path, zeo):
    """Settings for app servers on the ZEO server, running the pid app."""
    return {
        "ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=2),
        "ZODBSESSION_SERVER_THREADS": "4",
        "ZODBSESSION_STORAGE_POOL_SIZE": "4",
        **pid_app_env(tmp_path),
    }


def test_two_workers_on_zeo_serve_from_two_pids_and_count_exactly(tmp_path, env):
    server = ServerProcess(tmp_path, env, "--workers", "2").start()
    pids: set[int] = set()
    try:
        client = Client(server.url)
        assert client.json("POST", "/")[1]["n"] == 1  # the cookie, before the threads share it
        counts = post_until_pids(client, pids)
        status, answer = client.json("GET", "/")
        assert len(pids) == 2, f"{len(counts)} requests all served by {pids}"
        assert server.process.pid not in pids  # the parent only supervises
        assert answer["n"] == len(counts) + 1
        assert sorted(counts) == list(range(2, len(counts) + 2))  # every increment seen once
    finally:
        status = server.stop()
    assert status == 0, server.log()
    for pid in pids:
        assert not alive(pid)
    log = server.log()
    assert log.count("janitor elsewhere") == 1  # the janitor runs in worker 0 only
    assert "with 2 workers of 4 threads" in log
    assert "all workers exited" in log


@pytest.mark.parametrize("uri", ["file://var/Data.fs", "memory://"], ids=["file", "memory"])
def test_workers_on_an_embedded_storage_exit_2_in_one_line(tmp_path, uri):
    result = run_cli("serve", "--workers", "2", env={"ZODBSESSION_STORAGE_URI": uri}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zodbsession: server.workers: 2 processes cannot share")
    assert "can be opened by one process only" in lines[0]
    assert "(got 2 from the command line)" in lines[0]


def test_a_killed_worker_is_restarted_while_the_other_serves(tmp_path, env):
    with ServerProcess(tmp_path, env, "--workers", "2") as server:
        client = Client(server.url)
        client.json("POST", "/")
        pids: set[int] = set()
        posted = 1 + len(post_until_pids(client, pids))
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: "restarting it" in server.log(), what="the restart")

        def a_new_worker_answers() -> bool:
            nonlocal posted
            status, answer = client.json("POST", "/")
            assert status == 200, answer
            posted += 1
            assert answer["n"] == posted
            return answer["pid"] not in pids

        wait_for(a_new_worker_answers, what="the new worker to serve")
    assert server.process.returncode == 0
    assert f"(pid {victim}) exited" in server.log() and "killed by SIGKILL" in server.log()


def test_sigterm_lets_a_worker_finish_its_request_in_flight(tmp_path, env):
    server = ServerProcess(tmp_path, env, "--workers", "2").start()
    try:
        result = {}
        client = Client(server.url)
        request = threading.Thread(target=lambda: result.update(r=client.json("POST", "/slow")))
        request.start()
        time.sleep(0.5)  # the request is now inside the application, in one worker
        assert server.stop() == 0
        request.join(30)
    finally:
        server.kill()
    assert result["r"][0] == 200 and result["r"][1]["n"] == 1


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path, env):
    server = ServerProcess(tmp_path, env, "--workers", "2").start()
    pids: set[int] = set()
    try:
        client = Client(server.url)
        client.json("POST", "/")
        post_until_pids(client, pids)
    finally:
        server.kill()  # SIGKILL: no chance to forward anything
    wait_for(lambda: not any(alive(pid) for pid in pids), what="the orphaned workers to exit")
    assert "the supervisor (pid" in server.log()


def test_workers_give_up_within_the_bound_when_zeo_is_unreachable(tmp_path):
    env = {"ZODBSESSION_STORAGE_URI": f"zeo://127.0.0.1:{free_port()}?wait_timeout=1",
           "ZODBSESSION_SERVER_PORT": str(free_port())}
    began = time.monotonic()
    result = run_cli("serve", "--workers", "3", env=env, cwd=tmp_path)
    assert time.monotonic() - began < 15
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("zodbsession: worker 0 could not start: zeo://")
    assert "no ZEO server answered within 1 s" in last
    assert "Traceback" not in result.stderr
