"""Thread hops per ASGI read and write, counted in process: a count that load cannot bend.

``SessionMiddleware`` counts every step it hands to a worker thread
(``WorkerThreads.hops``). This drives the bench's ASGI counter app
(``asgi_app.counter_app``) through the middleware directly, one request at a
time on one event loop, and reads the count around each request:

- on the group-commit FileStorage that ``file://`` opens (``web.asgi.inline``:
  steps in the loop): a write and a read of a session in the connection's
  cache, and a read and a write after ``db.cacheMinimize()`` (the session's
  objects must be loaded: that load takes a thread);
- on ZEO (a server in this process, on loopback): a write and a read, whose
  steps keep their threads (a begin is a round trip).

Issue #25's goal: a cached read 0 hops, a write 1, on a local storage.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ZODB import DB

from bench.asgi_app import counter_app
from zodbsession.asgi import SessionMiddleware
from zodbsession.core.groupcommit import GroupCommitFileStorage

#: Requests of each kind counted (each one's hops must be the same).
REQUESTS = 20
#: Issue #25's goals: hops per cached read and per write on a local storage.
GOALS = {"read": 0, "write": 1}


async def _request(middleware: SessionMiddleware, method: str, cookie: str | None,
                   ) -> tuple[int, str | None, bytes]:
    """One request through *middleware*; its thread hops, the cookie it set, its body."""
    headers = [(b"cookie", cookie.encode())] if cookie else []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": "/count", "raw_path": b"/count", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    before = middleware.threads.hops
    await middleware(scope, receive, send)
    hops = middleware.threads.hops - before
    start = sent[0]
    if start["status"] != 200:
        raise RuntimeError(f"{method} answered {start['status']}")
    set_cookie = next((bytes(v).decode() for n, v in start["headers"] if n == b"set-cookie"), None)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return hops, set_cookie.split(";")[0] if set_cookie else None, body


def _hops_of(db: DB, *, uncached: bool = False) -> dict[str, list[int]]:
    """Hops per write and per read on *db* (after ``cacheMinimize`` each, if *uncached*)."""
    middleware = SessionMiddleware(counter_app, db)

    async def drive() -> dict[str, list[int]]:
        _, cookie, _ = await _request(middleware, "POST", None)  # the session, made once
        counted: dict[str, list[int]] = {"write": [], "read": []}
        for _ in range(REQUESTS):
            for kind, method in (("write", "POST"), ("read", "GET")):
                if uncached:
                    db.cacheMinimize()
                hops, _, _ = await _request(middleware, method, cookie)
                counted[kind].append(hops)
        return counted

    try:
        return asyncio.run(drive())
    finally:
        middleware.close()


def asgi_hops(workdir: Path) -> dict[str, Any]:
    """The section: hops per request, by storage and kind (each the same for every request, or a list)."""
    results: dict[str, Any] = {"requests": REQUESTS, "storages": {}}
    db = DB(GroupCommitFileStorage(str(workdir / "asgi-hops.fs")))
    try:
        results["storages"]["file:// (group commit), cached"] = _hops_of(db)
        results["storages"]["file:// (group commit), not cached"] = _hops_of(db, uncached=True)
    finally:
        db.close()
    try:
        import ZEO
    except ImportError:
        results["skipped"] = "ZEO is not installed: no ZEO line"
        return results
    address, stop = ZEO.server(path=str(workdir / "asgi-hops-zeo.fs"))
    try:
        zeo_db = ZEO.DB(address)
        try:
            results["storages"]["zeo://, cached"] = _hops_of(zeo_db)
        finally:
            zeo_db.close()
    finally:
        stop()
    return results


def _shown(counts: list[int]) -> str:
    low, high = min(counts), max(counts)
    return f"{low}" if low == high else f"{low}-{high}"


def render(section: dict[str, Any]) -> str:
    """The Markdown table of thread hops per ASGI request, with the goals' verdicts."""
    lines = [f"Thread hops per ASGI request (`SessionMiddleware`, `WorkerThreads.hops`), "
             f"{section['requests']} requests of each kind, one at a time:", "",
             "| storage | hops per write | hops per read |", "| --- | ---: | ---: |"]
    for name, counted in section["storages"].items():
        lines.append(f"| {name} | {_shown(counted['write'])} | {_shown(counted['read'])} |")
    lines.append("")
    for goal in goals(section):
        lines.append(f"- {goal['goal']}: {goal['shown']}, {'met' if goal['met'] else 'missed'}")
    if section.get("skipped"):
        lines.append(f"- {section['skipped']}")
    return "\n".join(lines) + "\n"


def goals(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #25's hop goals on the group-commit FileStorage with the session cached."""
    cached = section["storages"].get("file:// (group commit), cached")
    if cached is None:
        return []
    return [{"goal": f"ASGI {kind}s on file:// (cached session) <= {at_most} thread hop(s)",
             "shown": _shown(cached[kind]), "met": max(cached[kind]) <= at_most}
            for kind, at_most in GOALS.items()]
