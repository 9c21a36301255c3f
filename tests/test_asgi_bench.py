"""The bench's ASGI contender serves and counts correctly (a smoke run: two clients, a few requests).

Marked slow: it starts the contender as a process of its own, which takes
seconds of imports on a loaded machine; ``pytest -m slow`` runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_load import asgi_command, http_load  # noqa: E402


@pytest.mark.slow
def test_asgi_contender_counts_every_acknowledged_increment(tmp_path):
    figures = http_load(tmp_path, 2, 10, 10.0, command=asgi_command())
    assert figures["errors"] == 0, figures["error_samples"]
    assert figures["acknowledged"] == 20
    assert figures["counters_match"]
