"""The in-process workload every contender runs: clients, requests, timing, statistics.

A request is a plain WSGI call, no sockets, so that what is measured is the
session layer's own cost plus one tiny application. ``counter_app`` is that
application for every contender: a POST increments a counter in the session
(a *write*), a GET reads it (a *read*). Each contender only changes how the
session reaches ``environ`` and what happens around the call (a transaction,
a file). ``Client`` keeps one cookie, like one browser; requests cycle over
the clients so every measured request names a session that already exists.
"""

from __future__ import annotations

import gc
import io
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: The environ every request starts from; copied, never shared.
_BASE_ENVIRON: dict[str, Any] = {
    "SERVER_NAME": "bench.invalid",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/counter",
    "QUERY_STRING": "",
    "CONTENT_LENGTH": "0",
    "REMOTE_ADDR": "127.0.0.1",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": io.StringIO(),
    "wsgi.multithread": False,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}


def counter_app(session_key: str, *, explicit_save: bool = False) -> WSGIApp:
    """The benchmark's application: POST increments ``session["count"]``, GET reads it.

    *session_key* is where the contender puts the session mapping in the
    environ. *explicit_save* calls ``session.save()`` after a write, which
    Beaker needs (its sessions are saved only on request).
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        session = environ[session_key]
        if environ["REQUEST_METHOD"] == "POST":
            count = session.get("count", 0) + 1
            session["count"] = count
            if explicit_save:
                session.save()
        else:
            count = session.get("count", 0)
        body = b"%d" % count
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class Client:
    """One browser: a cookie (learnt from the first ``Set-Cookie``) and its requests.

    ``acked`` counts the writes answered 200, so that a contender's final
    counter can be checked against it.
    """

    __slots__ = ("app", "cookie", "acked", "last_body", "_post", "_get")

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.cookie: str | None = None
        self.acked = 0
        self.last_body = b""
        self._post = {**_BASE_ENVIRON, "REQUEST_METHOD": "POST"}
        self._get = {**_BASE_ENVIRON, "REQUEST_METHOD": "GET"}

    def write(self) -> None:
        """POST: increment the counter."""
        self._call(self._post)
        self.acked += 1

    def read(self) -> None:
        """GET: read the counter."""
        self._call(self._get)

    def _call(self, template: dict[str, Any]) -> None:
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(b"")
        if self.cookie is not None:
            environ["HTTP_COOKIE"] = self.cookie
        answer: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            answer.append(status)
            answer.append(headers)

        body_iter = self.app(environ, start_response)
        try:
            body = b"".join(body_iter)
        finally:
            close = getattr(body_iter, "close", None)
            if close is not None:
                close()
        status, headers = answer
        if not status.startswith("200"):
            raise RuntimeError(f"the benchmark app answered {status}: {body[:200]!r}")
        for name, value in headers:
            if name.lower() == "set-cookie":
                self.cookie = value.split(";", 1)[0].strip()
        self.last_body = body


def make_clients(app: WSGIApp, count: int) -> list[Client]:
    """*count* clients, each with a stored session of its own (made by one write)."""
    clients = [Client(app) for _ in range(count)]
    for client in clients:
        client.write()
    return clients


def run_requests(clients: Sequence[Client], kind: str, count: int, *, collect: bool = True) -> list[int]:
    """Send *count* requests of *kind* ("write" or "read") round-robin; ns per request.

    The garbage collector is run first (unless *collect* is false) and left
    enabled, the same for every contender: collections during the phase are
    part of the cost.
    """
    if collect:
        gc.collect()
    timer = time.perf_counter_ns
    times = [0] * count
    n_clients = len(clients)
    for i in range(count):
        client = clients[i % n_clients]
        call = client.write if kind == "write" else client.read
        start = timer()
        call()
        times[i] = timer() - start
    return times


@dataclass(frozen=True)
class Summary:
    """Statistics of one batch of per-request times, in microseconds."""

    median_us: float
    p99_us: float
    mean_us: float
    requests_per_s: float
    count: int

    @classmethod
    def of(cls, times_ns: Sequence[int]) -> Summary:
        ordered = sorted(times_ns)
        n = len(ordered)
        mean = sum(ordered) / n
        return cls(
            median_us=percentile(ordered, 50) / 1000,
            p99_us=percentile(ordered, 99) / 1000,
            mean_us=mean / 1000,
            requests_per_s=1e9 / mean if mean else float("inf"),
            count=n,
        )


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The *pct* percentile of sorted values, linearly interpolated."""
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median of unsorted values."""
    return percentile(sorted(values), 50)
