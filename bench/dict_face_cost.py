"""What the dict face (``RequestSession.as_dict()``, the ASGI door's ``scope["session"]``) costs.

Run: ``python bench/dict_face_cost.py``. It times, on a MappingStorage, a
write, a read, a flash taken back, and ``json.dumps`` of a ten-key session
through the plain view and through its dict face (which keeps its mirror in
step), best of three repeats, in microseconds.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable

import transaction
from ZODB import DB
from ZODB.MappingStorage import MappingStorage

from zodbsession.core.manager import SessionManager
from zodbsession.core.request_session import RequestSession

NUMBER = 200_000


def best_us(fn: Callable[[], object]) -> float:
    return min(timeit.repeat(fn, number=NUMBER, repeat=3)) / NUMBER * 1e6


def main() -> None:
    db = DB(MappingStorage())
    manager = SessionManager()
    tm = transaction.TransactionManager(explicit=True)
    connection = db.open(transaction_manager=tm)
    tm.begin()
    data = {f"k{i}": i for i in range(10)}
    view = RequestSession(manager, connection, None)
    view.update(data)
    faced = RequestSession(manager, connection, None)
    face = faced.as_dict()
    face.update(data)
    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("s['k1'] = 1", lambda: view.__setitem__("k1", 1), lambda: face.__setitem__("k1", 1)),
        ("s['k1']", lambda: view["k1"], lambda: face["k1"]),
        ("flash() + pop_flash()", lambda: (view.flash("m"), view.pop_flash()),
         lambda: (faced.flash("m"), faced.pop_flash())),
        ("json.dumps", lambda: json.dumps(view.copy()), lambda: json.dumps(face)),
    ]
    print(f"{'operation':24} {'view':>8} {'face':>8}  (us; json: view.copy() vs the face itself)")
    for name, on_view, on_face in cases:
        print(f"{name:24} {best_us(on_view):8.2f} {best_us(on_face):8.2f}")
    tm.abort()
    connection.close()
    db.close()


if __name__ == "__main__":
    main()
