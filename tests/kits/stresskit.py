"""Load, kill and check: what the crash, soak and pack-while-writing tests share.

A ``Writer`` is one browser POSTing increments to its own session, one
request at a time, and keeping exact books: the last count a 200 answered
(``acknowledged``) and whether a request was on the wire when the server
went away (``in_flight``). That is enough to state exactly what a restart
must show: the stored count is ``acknowledged``, or ``acknowledged + 1``
when a request was in flight (it may have committed without being answered).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serverproc import Client, run_cli

#: The application the stress tests serve: POST increments ``session["n"]``
#: and answers the new count with the attempt that committed it; GET reads it.
COUNTER_APP = '''
import json


def app(environ, start_response):
    session = environ["zodbsession.session"]
    if environ["REQUEST_METHOD"] == "POST":
        session["n"] = session.get("n", 0) + 1
    body = json.dumps({"n": session.get("n", 0), "attempt": environ["zodbsession.attempt"]})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]
'''

#: Every way a request can fail because the server went away mid-request.
GONE = (OSError, http.client.HTTPException)


def counter_app_env(directory: Path) -> dict[str, str]:
    """Write ``counterapp.py`` to *directory*; the settings that make ``serve`` run it."""
    (directory / "counterapp.py").write_text(COUNTER_APP)
    return {"ZODBSESSION_SERVER_APP": "counterapp:app", "PYTHONPATH": str(directory)}


@dataclass
class Writer:
    """One browser incrementing its session's counter, one request at a time.

    With ``shared`` other writers use the same session, so only the set of
    all their ``answered`` counts can be checked (each once, none missing).
    """

    client: Client
    shared: bool = False  # several writers share this session: counts interleave
    answered: list[int] = field(default_factory=list)  # every count a 200 answered
    acknowledged: int = 0  # the count the last 200 answered (or the count read after a restart)
    acknowledged_total: int = 0  # increments answered 200, over the whole run
    committed_unanswered: int = 0  # in-flight increments a restart showed were committed
    in_flight: bool = False
    statuses: Counter[int] = field(default_factory=Counter)
    retries: int = 0  # attempts beyond the first, summed over the 200s
    problems: list[str] = field(default_factory=list)

    def start_session(self) -> None:
        """The first increment, answered before any fault: the browser then has its cookie."""
        status, _headers, body = self.client.request("POST", "/", b"")
        assert status == 200, (status, body)
        self._answered(json.loads(body))

    def run(self, stop: threading.Event, pause: float = 0.0) -> None:
        """Increment until *stop* is set or the server goes away."""
        while not stop.is_set():
            self.in_flight = True
            try:
                status, _headers, body = self.client.request("POST", "/", b"", timeout=60)
            except GONE:
                return  # in_flight stays set: the answer never came
            self.in_flight = False
            self.statuses[status] += 1
            if status == 200:
                self._answered(json.loads(body))
            elif status == 429:
                # Past the session's queue bound: nothing was written; a polite
                # client waits as long as it was told to.
                stop.wait(float(_headers.get("Retry-After", "1")))
            if pause:
                time.sleep(pause)

    def _answered(self, data: dict[str, Any]) -> None:
        self.answered.append(data["n"])
        if not self.shared and data["n"] != self.acknowledged + 1:
            self.problems.append(f"answered {data['n']} after {self.acknowledged}")
        self.acknowledged = data["n"]
        self.acknowledged_total += 1
        self.retries += data["attempt"] - 1

    def stored(self) -> int:
        status, _headers, body = self.client.request("GET", "/")
        assert status == 200, (status, body)
        return json.loads(body)["n"]

    def check_after_restart(self) -> None:
        """The stored count is exactly what was acknowledged, plus the request in flight if it committed."""
        stored = self.stored()
        allowed = {self.acknowledged, self.acknowledged + 1} if self.in_flight else {self.acknowledged}
        if stored not in allowed:
            self.problems.append(f"stored {stored}, acknowledged {self.acknowledged}, "
                                 f"in flight: {self.in_flight}")
        self.committed_unanswered += stored - self.acknowledged
        self.acknowledged = stored
        self.in_flight = False


def run_writers(writers: list[Writer], seconds: float, pause: float = 0.0) -> None:
    """Let every writer write for *seconds*, then stop them and wait."""
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop, pause), daemon=True) for w in writers]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(90)
        assert not thread.is_alive(), "a writer hung"


def assert_sound(cwd: Path, env: dict[str, str]) -> str:
    """``zodbsession verify`` (fstest, fsrefs, the BTree checks) says the storage is sound."""
    result = run_cli("verify", env=env, cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the storage is sound" in result.stdout
    assert "failed" not in result.stdout
    for check in ("fstest", "references", "btrees", "consistency"):
        assert f"passed   main: {check}" in result.stdout, result.stdout
    return result.stdout
