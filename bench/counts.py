"""The counts that load cannot bend, in process: what a new session stores, and fsyncs per write.

- **New session**: with S sessions already stored, each of N further new
  sessions is made by one request (a POST without a cookie); the commit it
  makes is read back from the FileStorage (``storage.iterator``): how many
  object records, how many bytes appended, and per class which objects and
  how many bytes. The same for the plain-ZODB floor.
- **fsyncs per acknowledged write**: 16 threads, each with its own session,
  POST through ``SessionPublisher`` on a ``GroupCommitFileStorage`` (the
  storage ``zodbsession serve`` opens for ``file://``) for a fixed number of
  writes; the storage counts its fsyncs and commits. The HTTP run counts the
  same thing inside the real server (``http_compare``).
- **Calls per request**: Python calls (``sys.setprofile``'s ``call`` and
  ``c_call`` events, both counted) made by one cached read (a GET of a
  session already in the connection's cache) and one write (a POST that
  increments it), through ``SessionPublisher`` and through the plain-ZODB
  floor, each counted around the same ``bench.workload.Client`` call. The
  load on the machine cannot change these; ``tests/core/test_call_budget.py``
  holds zodbsession to its budget.
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ZODB import DB

from bench.contenders import PlainZODB, ZodbSession
from bench.populate import populate_plain, populate_zodbsession
from bench.workload import Client, counter_app
from zodbsession import SessionPublisher
from zodbsession.core.groupcommit import GroupCommitFileStorage

WRITERS = 16


def _class_of(record: bytes) -> str:
    """The class named by a ZODB record's first pickle."""
    try:
        meta = pickle.Unpickler(io.BytesIO(record)).load()
    except Exception:
        return "?"
    klass = meta[0] if isinstance(meta, tuple) else meta
    if isinstance(klass, tuple):
        klass = klass[0]
    return getattr(klass, "__name__", str(klass))


def _post(app: Any, cookie: str | None = None) -> str | None:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/count", "wsgi.input": io.BytesIO(b""),
               "CONTENT_LENGTH": "0", "SERVER_NAME": "bench", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "HTTP_HOST": "bench"}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    seen: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        assert status.startswith("200"), status
        for name, value in headers:
            if name.lower() == "set-cookie":
                seen["cookie"] = value.split(";")[0]
        return lambda data: None

    body = app(environ, start_response)
    b"".join(body)
    if hasattr(body, "close"):
        body.close()
    return seen.get("cookie", cookie)


def _new_session_commits(storage: Any, app: Any, count: int) -> dict[str, Any]:
    records: list[int] = []
    sizes: list[int] = []
    by_class: Counter[str] = Counter()
    bytes_by_class: Counter[str] = Counter()
    for _ in range(count):
        before = storage.lastTransaction()
        size_before = storage.getSize()
        _post(app)
        after = storage.lastTransaction()
        assert after != before, "the new session committed nothing"
        sizes.append(storage.getSize() - size_before)
        n = 0
        for txn in storage.iterator(start=after):
            for record in txn:
                n += 1
                name = _class_of(record.data)
                by_class[name] += 1
                bytes_by_class[name] += len(record.data)
        records.append(n)
    return {
        "objects_per_session": sum(records) / count,
        "bytes_per_session": sum(sizes) / count,
        "objects_by_class": {k: v / count for k, v in by_class.most_common()},
        "pickle_bytes_by_class": {k: bytes_by_class[k] / count for k, _ in by_class.most_common()},
    }


def new_session_costs(workdir: Path, existing: int, count: int) -> dict[str, Any]:
    """Objects and bytes one new session stores, zodbsession and the floor, among *existing*."""
    results = {}
    directory = workdir / "zodbsession"
    directory.mkdir(parents=True)
    db = DB(GroupCommitFileStorage(str(directory / "Data.fs")))
    try:
        import time

        populate_zodbsession(db, [(existing, time.time())])
        publisher = SessionPublisher(counter_app("zodbsession.session"), db)
        results["zodbsession"] = _new_session_commits(db.storage, publisher, count)
    finally:
        db.close()
    (workdir / "plain").mkdir()
    floor = PlainZODB(workdir / "plain", 0, populate=False)
    try:
        populate_plain(floor.db, existing)
        results["plain-zodb"] = _new_session_commits(floor.db.storage, floor.app, count)
    finally:
        floor.close()
    return results


def fsyncs_per_write(workdir: Path, writes_per_writer: int) -> dict[str, Any]:
    """fsyncs per acknowledged write, WRITERS threads through SessionPublisher (group commit)."""
    directory = workdir / "fsyncs"
    directory.mkdir(parents=True)
    storage = GroupCommitFileStorage(str(directory / "Data.fs"))
    db = DB(storage, pool_size=WRITERS)
    try:
        publisher = SessionPublisher(counter_app("zodbsession.session"), db)
        cookies = [_post(publisher) for _ in range(WRITERS)]
        fsyncs, commits = storage.fsyncs, storage.commits
        start = threading.Barrier(WRITERS)

        def write(cookie: str | None) -> None:
            start.wait()
            for _ in range(writes_per_writer):
                _post(publisher, cookie)

        threads = [threading.Thread(target=write, args=(c,)) for c in cookies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        acknowledged = WRITERS * writes_per_writer
        return {"writers": WRITERS, "acknowledged": acknowledged,
                "commits": storage.commits - commits, "fsyncs": storage.fsyncs - fsyncs,
                "fsyncs_per_write": (storage.fsyncs - fsyncs) / acknowledged}
    finally:
        db.close()


def count_calls(fn: Callable[[], object]) -> int:
    """How many Python calls ``fn()`` makes: ``sys.setprofile``'s ``call`` and ``c_call`` events.

    Deterministic for one interpreter and one set of installed packages:
    counts, not timings.
    """
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" or event == "c_call":
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def calls_per_request(workdir: Path, *, filler: int = 100, warm_rounds: int = 5) -> dict[str, dict[str, int]]:
    """Calls per cached read and per write, zodbsession and the plain-ZODB floor: {name: {read, write}}.

    One client's session, made by a write, then *warm_rounds* reads and
    writes so that the session is in the cache and every lazy set-up done;
    then one read and one write counted.
    """
    result = {}
    for kind in (ZodbSession, PlainZODB):
        directory = workdir / kind.name
        directory.mkdir(parents=True, exist_ok=True)
        contender = kind(directory, filler)
        try:
            client = Client(contender.app)
            client.write()
            for _ in range(warm_rounds):
                client.read()
                client.write()
            result[kind.name] = {"read": count_calls(client.read), "write": count_calls(client.write)}
        finally:
            contender.close()
    return result


def counts(workdir: Path, *, existing: int, new_sessions: int, writes_per_writer: int,
           ) -> dict[str, Any]:
    """The ``counts`` section."""
    return {"existing_sessions": existing,
            "new_session": new_session_costs(workdir / "new", existing, new_sessions),
            "fsyncs": fsyncs_per_write(workdir, writes_per_writer),
            "calls": calls_per_request(workdir / "calls")}


def render(section: dict[str, Any]) -> str:
    """The Markdown of the ``counts`` section."""
    lines = [f"New sessions among {section['existing_sessions']:,} stored, one commit each, read "
             "back from the FileStorage:", "",
             "| contender | objects per new session | bytes appended per new session | objects "
             "(pickle bytes) by class |", "| --- | ---: | ---: | --- |"]
    for name, entry in section["new_session"].items():
        classes = ", ".join(f"{k} {v:.2f} ({entry['pickle_bytes_by_class'][k]:,.0f} B)"
                            for k, v in entry["objects_by_class"].items())
        lines.append(f"| {name} | {entry['objects_per_session']:.2f} | "
                     f"{entry['bytes_per_session']:,.0f} | {classes} |")
    fs = section["fsyncs"]
    lines += ["", f"fsyncs per acknowledged write, {fs['writers']} threads writing through "
              f"`SessionPublisher` in process on the group-commit FileStorage: "
              f"**{fs['fsyncs_per_write']:.3f}** ({fs['fsyncs']:,} fsyncs for "
              f"{fs['acknowledged']:,} acknowledged writes, {fs['commits']:,} commits)."]
    calls = section.get("calls")
    if calls:
        lines += ["", "Python calls per request (`sys.setprofile` call and c_call events), one cached "
                  "read and one write through the same in-process client:", "",
                  "| contender | calls per cached read | calls per write |", "| --- | ---: | ---: |"]
        lines += [f"| {name} | {entry['read']:,} | {entry['write']:,} |" for name, entry in calls.items()]
    return "\n".join(lines) + "\n"
