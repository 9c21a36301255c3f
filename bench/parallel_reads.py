"""A page of N parallel reads on one cookie: how long the slowest answer takes, against a lone read.

A single-page app fires its API calls at once on one cookie. The endpoint
reads the session and takes ``--dwell`` seconds (0.3 by default: a slow
query); the server is ``SessionPublisher`` on waitress with 8 threads, as
``zodbsession serve`` runs it. Printed: the lone read's time, the slowest of
N parallel reads, their ratio, and the statuses (429s are refusals).

    python -m bench.parallel_reads            # N = 12
    python -m bench.parallel_reads --parallel 64
"""

from __future__ import annotations

import argparse
import http.client
import logging
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from waitress.server import create_server
from ZODB import DB
from ZODB.FileStorage import FileStorage

from zodbsession import SessionPublisher

COOKIE = "zodbsession"


def page(dwell: float) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["zodbsession.session"]
        if environ["PATH_INFO"] == "/make":
            session["n"] = 1
        else:
            session.get("n")
            time.sleep(dwell)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    return app


def get(port: int, method: str, path: str, cookie: str | None = None) -> tuple[int, float, str]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started, response.getheader("Set-Cookie") or ""
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=12)
    parser.add_argument("--dwell", type=float, default=0.3)
    args = parser.parse_args()
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # as serve quiets it
    with tempfile.TemporaryDirectory() as tmp:
        db = DB(FileStorage(str(Path(tmp) / "Data.fs")))
        server = create_server(SessionPublisher(page(args.dwell), db), host="127.0.0.1", port=0, threads=8)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        port = server.effective_port
        try:
            _status, _t, set_cookie = get(port, "POST", "/make")
            cookie = set_cookie.split(";")[0].split("=", 1)[1]
            lone = min(get(port, "GET", "/read", cookie)[1] for _ in range(3))
            with ThreadPoolExecutor(args.parallel) as pool:
                answers = list(pool.map(lambda _: get(port, "GET", "/read", cookie), range(args.parallel)))
        finally:
            server.close()
            db.close()
    slowest = max(seconds for _status, seconds, _c in answers)
    statuses = dict(Counter(status for status, _s, _c in answers))
    print(f"{args.parallel} parallel GETs on one cookie, {args.dwell:g} s each, 8 threads: "
          f"lone {lone:.3f} s, slowest {slowest:.3f} s, ratio {slowest / lone:.2f}x, statuses {statuses}")


if __name__ == "__main__":
    main()
