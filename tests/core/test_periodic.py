"""``Periodic``: the loop behind the janitor, the metrics refresher and the chart sampler."""

from __future__ import annotations

import threading

from zodbsession.core.periodic import Periodic


def test_a_failing_call_is_logged_and_the_loop_goes_on(caplog):
    calls = []
    third = threading.Event()

    def work():
        calls.append(1)
        if len(calls) == 3:
            third.set()
        if len(calls) == 1:
            raise RuntimeError("storage away")

    loop = Periodic(work, 0.01, name="test-loop", immediately=True)
    loop.start()
    try:
        assert third.wait(5)
    finally:
        loop.stop()
    assert "test-loop failed" in caplog.text


def test_an_interval_of_zero_never_starts():
    called = threading.Event()
    loop = Periodic(called.set, 0, name="off", immediately=True)
    loop.start()
    loop.stop()
    assert not called.wait(0.05)


def test_stop_ends_the_wait_at_once_and_nothing_runs_after_it():
    calls = []
    loop = Periodic(lambda: calls.append(1), 3600, name="slow")
    loop.start()
    loop.stop(timeout=5)
    assert calls == []
