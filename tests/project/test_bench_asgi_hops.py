"""The bench's thread-hop counts (bench/asgi_hops.py): a cached read 0, a write 1, ZEO's kept.

Counts, not timings: the same on a busy machine as on an idle one.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.asgi_hops import REQUESTS, asgi_hops, goals, render  # noqa: E402


def test_the_bench_counts_hops_per_asgi_read_and_write_by_storage(tmp_path):
    section = asgi_hops(tmp_path)
    storages = section["storages"]
    assert storages["file:// (group commit), cached"] == {"write": [1] * REQUESTS, "read": [0] * REQUESTS}
    assert storages["file:// (group commit), not cached"] == {"write": [2] * REQUESTS,
                                                              "read": [1] * REQUESTS}
    assert storages["zeo://, cached"] == {"write": [2] * REQUESTS, "read": [2] * REQUESTS}
    assert [goal["met"] for goal in goals(section)] == [True, True]
    assert "| file:// (group commit), cached | 1 | 0 |" in render(section)
