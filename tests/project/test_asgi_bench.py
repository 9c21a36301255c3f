"""The bench's ASGI contender (bench/asgi_app.py) serves the counter as every contender must.

A smoke run of the process ``bench --http`` starts: a session made by a first
POST, counted by the next, read back by a GET. Marked slow: it starts a
process of its own, which takes seconds of imports on a loaded machine;
``pytest -m slow`` runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.http_compare import _request, _start, _stop  # noqa: E402
from bench.http_load import free_port  # noqa: E402


@pytest.mark.slow
def test_asgi_contender_counts_per_session(tmp_path):
    port = free_port()
    process = _start([sys.executable, "-m", "bench.asgi_app", str(port)],
                     {"PYTHONPATH": str(ROOT), "ZODBSESSION_STORAGE_URI": f"file://{tmp_path}/Data.fs"},
                     port, tmp_path / "asgi.log")
    try:
        status, body, cookie = _request(port, "POST", None)
        assert (status, body) == (200, "1")
        assert cookie is not None and cookie.startswith("zodbsession=")
        assert _request(port, "POST", cookie)[:2] == (200, "2")
        assert _request(port, "GET", cookie) == (200, "2", None)
        assert _request(port, "GET", None)[:2] == (200, "0")
    finally:
        _stop(process)
