"""The read fast path, held to its budget: Python calls per request through ``SessionPublisher``.

Counted with ``sys.setprofile`` (``call`` and ``c_call`` events, both
counted) around one request of the benchmark's own client
(``bench.counts.count_calls``), after the session is cached: counts, not
timings, so the machine's load cannot move them. The figures and what the
fast path skips are in docs/benchmarks.md; the budgets leave little room, so
that what a change adds to every request is noticed here.
"""

from __future__ import annotations

from pathlib import Path

from bench.contenders import ZodbSession
from bench.counts import count_calls
from bench.workload import Client

#: A cached read (GET of a session whose values are all immutable); 315 before the fast path.
READ_BUDGET = 200
#: A write (POST that increments the counter and commits); 594 before.
WRITE_BUDGET = 500


def _warm_client(workdir: Path) -> tuple[ZodbSession, Client]:
    contender = ZodbSession(workdir, 10)
    client = Client(contender.app)
    client.write()
    for _ in range(5):
        client.read()
        client.write()
    return contender, client


def test_a_cached_read_makes_at_most_200_python_calls(tmp_path):
    contender, client = _warm_client(tmp_path)
    try:
        calls = count_calls(client.read)
        assert client.last_body == b"6"  # it did read the session
    finally:
        contender.close()
    assert calls <= READ_BUDGET, f"a cached read made {calls} calls (budget {READ_BUDGET})"


def test_a_write_makes_at_most_500_python_calls(tmp_path):
    contender, client = _warm_client(tmp_path)
    try:
        calls = count_calls(client.write)
        client.read()
        assert client.last_body == b"7"  # the write was committed
    finally:
        contender.close()
    assert calls <= WRITE_BUDGET, f"a write made {calls} calls (budget {WRITE_BUDGET})"


def test_a_session_holding_a_mutable_value_still_pays_for_its_unsaved_change_fingerprint(tmp_path):
    """The fingerprint is skipped only when no value can change in place: a list brings it back."""
    contender, client = _warm_client(tmp_path)
    try:
        immutable_read = count_calls(client.read)
        with contender.db.transaction() as connection:
            session = contender.publisher.manager.get(connection, client.cookie.split("=", 1)[1])
            session["cart"] = ["a mutable value"]
        client.read()  # load the changed record into the cache
        mutable_read = count_calls(client.read)
    finally:
        contender.close()
    assert mutable_read > immutable_read + 5  # the pickling and the abort hook
