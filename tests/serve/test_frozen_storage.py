"""A frozen ZEO server (SIGSTOP): the operator's ``/metrics`` and dashboard keep answering.

A ZEO server that hangs with its connections open is not detected as gone,
so every read from the storage waits. The admin listener's reads are bounded
(``metrics.BoundedReader``): they answer within ``admin.storage_timeout``,
report the storage unreachable, and recover when the server resumes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from adminkit import TOKEN, admin_request
from prometheus_client.parser import text_string_to_metric_families
from serverproc import Client, ServerProcess, ZeoProcess, wait_for


def reachable(server: ServerProcess) -> float | None:
    status, _headers, body = admin_request(server, "GET", "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "zodbsession_storage_reachable":
                return sample.value
    return None


@pytest.fixture
def zeo(zeo: ZeoProcess) -> Iterator[ZeoProcess]:
    """tests/conftest.py's ZEO server, never left stopped (SIGSTOP) for its teardown."""
    yield zeo
    os.kill(zeo.process.pid, signal.SIGCONT)


def test_metrics_and_dashboard_answer_while_zeo_is_frozen_and_recover(tmp_path, env, zeo):
    env = {**env, "ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=2),
           "ZODBSESSION_ADMIN_STORAGE_TIMEOUT": "1"}
    with ServerProcess(tmp_path, env, admin_token=TOKEN) as server:
        assert Client(server.url).json("POST", "/api/counter")[0] == 200
        assert reachable(server) == 1
        os.kill(zeo.process.pid, signal.SIGSTOP)
        try:
            for _ in range(2):  # the second finds the first's read still hanging, and waits no longer
                assert reachable(server) == 0  # admin_request gives up after 10 s: this answered
            status, _headers, page = admin_request(server, "GET", "/")
            assert status == 200
            assert b"did not answer within 1 s" in page
        finally:
            os.kill(zeo.process.pid, signal.SIGCONT)
        wait_for(lambda: reachable(server) == 1, timeout=30, what="the storage to answer again")
        assert Client(server.url).json("POST", "/api/counter")[0] == 200
