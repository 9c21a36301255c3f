"""``python -m bench --http`` saves its results beside the full run's, never over them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.run import main  # noqa: E402


def test_an_http_run_keeps_the_full_runs_results(tmp_path, monkeypatch):
    full = tmp_path / "full.json"
    full.write_text('{"mode": "full", "compare": "the published figures"}')
    # With wrk reported missing the section is skipped: the run is quick and still saves.
    monkeypatch.setattr("bench.http_compare.find_tools", lambda names: dict.fromkeys(names))
    assert main(["--http", "--results-dir", str(tmp_path)]) == 0
    assert json.loads(full.read_text())["compare"] == "the published figures"
    saved = json.loads((tmp_path / "full-http.json").read_text())
    assert saved["http_compare"] == {"skipped": "wrk is missing (apt-get install wrk)"}
    report = (tmp_path / "full-http.md").read_text()
    assert "wrk is missing" in report
    assert "n/a" not in report  # no table of the in-process goals a run of HTTP alone cannot judge
