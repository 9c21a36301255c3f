"""One script of dict behaviours, run on the session of every front door and adapter.

Each step is one request: ``run_step(session, step)`` does what the step
names to the request's session, the way code written for dict sessions does,
and returns what it saw (JSON-able). ``check_script(call)`` runs the steps in
order through *call* (one HTTP request per step, on one cookie) and checks
each answer, so a step's writes are seen stored by the next request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from typing import Any

STEPS = ("fill", "look", "pop", "inplace", "inplace", "after", "clear", "empty")


def run_step(session: MutableMapping[str, Any], step: str) -> Any:
    """Do *step* to *session*; return what the request saw."""
    if step == "fill":
        session |= {"a": 1}
        session.update(b=2)
        session.update([("c", 3)])
        kept = session.setdefault("a", 99)
        session.setdefault("d", [])
        return {"keys": list(session), "kept": kept}
    if step == "look":
        try:
            dumped: Any = json.loads(json.dumps(session))
        except TypeError as exc:  # a view that is no dict instance: refused, never wrong
            dumped = f"TypeError: {exc}"
        copied = session.copy()  # type: ignore[attr-defined]
        return {
            "json": dumped,
            "dict": dict(session),
            "copy": copied,
            "copy_is_plain_dict": type(copied) is dict,
            "eq": session == {"a": 1, "b": 2, "c": 3, "d": []},
            "eq_reflected": {"a": 1, "b": 2, "c": 3, "d": []} == session,  # noqa: SIM300 (dict on the left)
            "ne": session != {"a": 1},
            "reversed": list(reversed(session)),  # type: ignore[call-overload]
            "or": session | {"e": 5},  # type: ignore[operator]
            "ror": {"z": 0, "a": 0} | session,  # type: ignore[operator]
            "items": [list(item) for item in session.items()],
            "get": [session.get("a"), session.get("missing", "default")],
        }
    if step == "pop":
        last = session.popitem()
        value = session.pop("c")
        return {"popitem": list(last), "pop": value, "keys": list(session)}
    if step == "inplace":
        session.setdefault("cart", []).append("x")  # the second time: a change nobody marks
        return {"cart": list(session["cart"])}
    if step == "after":
        return {"keys": list(session), "cart": session.get("cart"), "copy": session.copy()}  # type: ignore[attr-defined]
    if step == "clear":
        session.clear()
        return {"len": len(session)}
    if step == "empty":
        return {"keys": list(session), "eq_empty": session == {}}
    raise ValueError(step)


def check_script(call: Callable[[str], Any], *, json_dumps_works: bool) -> None:
    """Run ``STEPS`` through *call* (step -> the answer's JSON) and check every answer."""
    answers = [call(step) for step in STEPS]
    fill, look, pop, inplace1, inplace2, after, clear, empty = answers
    assert fill == {"keys": ["a", "b", "c", "d"], "kept": 1}
    data = {"a": 1, "b": 2, "c": 3, "d": []}
    if json_dumps_works:
        assert look["json"] == data
    else:
        assert look["json"].startswith("TypeError: Object of type ")
    assert look["dict"] == data
    assert look["copy"] == data
    assert look["copy_is_plain_dict"] is True
    assert look["eq"] is True
    assert look["eq_reflected"] is True
    assert look["ne"] is True
    assert look["reversed"] == ["d", "c", "b", "a"]
    assert look["or"] == {**data, "e": 5}
    assert look["ror"] == {"z": 0, "a": 1, "b": 2, "c": 3, "d": []}
    assert look["items"] == [["a", 1], ["b", 2], ["c", 3], ["d", []]]
    assert look["get"] == [1, "default"]
    assert pop == {"popitem": ["d", []], "pop": 3, "keys": ["a", "b"]}  # the LAST key, as a dict's
    assert inplace1 == {"cart": ["x"]}
    assert inplace2 == {"cart": ["x", "x"]}
    # stored: the pops, and the append nobody marked (found by the unsaved check)
    assert after == {"keys": ["a", "b", "cart"], "cart": ["x", "x"],
                     "copy": {"a": 1, "b": 2, "cart": ["x", "x"]}}
    assert clear == {"len": 0}
    assert empty == {"keys": [], "eq_empty": True}
