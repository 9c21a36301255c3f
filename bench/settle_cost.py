"""What ``RequestSession.settle`` (no silent in-place changes) costs a request that reads its session.

Run: ``python bench/settle_cost.py``. It times, on a MappingStorage, the
fingerprint taken when a found session is loaded plus the comparison at the
end, for a small session (5 keys) and a large one (50 keys of 20-item lists),
and a whole read request's session work for comparison. The
best of several repeats is reported, in microseconds; docs/testing.md quotes it.
"""

from __future__ import annotations

import timeit

import transaction
from ZODB import DB
from ZODB.MappingStorage import MappingStorage

from zodbsession.core.manager import SessionManager
from zodbsession.core.request_session import RequestSession
from zodbsession.core.unsaved import changed_keys, fingerprint

SMALL = {"user": "alice", "cart": ["apple", "pear", "plum"], "prefs": {"theme": "dark", "lang": "en"},
         "n": 42, "_f_": ["Saved."]}
LARGE = {f"k{i}": list(range(20)) for i in range(50)}


def best_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main() -> None:
    for name, data in (("small", SMALL), ("large", LARGE)):
        before = fingerprint(data)
        load = best_us(lambda data=data: fingerprint(data), 20000)
        end = best_us(lambda data=data, before=before: changed_keys(before, data), 20000)
        print(f"{name:5} session ({len(before)} bytes pickled): fingerprint {load:.1f} us + "
              f"compare {end:.1f} us = {load + end:.1f} us")

    db = DB(MappingStorage())
    manager = SessionManager()
    conn = db.open(transaction.TransactionManager())
    session = manager.new(conn)
    session.update(SMALL)
    conn.transaction_manager.commit()

    def read_request() -> None:
        conn.transaction_manager.begin()
        view = RequestSession(manager, conn, session.id)
        view["cart"]
        view.settle()
        conn.transaction_manager.abort()

    total = best_us(read_request, 5000)
    print(f"a whole read request's session work (begin, find, read, settle, abort; small session): "
          f"{total:.1f} us")


if __name__ == "__main__":
    main()
