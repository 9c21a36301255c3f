"""The outcome table: one data table, the docstrings drawn from it, every row reachable.

Also the core's layering: the request-transaction core imports nothing from
the front doors, the server or ZEO, read from the modules' own imports.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from transaction.interfaces import TransientError
from ZEO.Exceptions import ClientDisconnected
from ZODB.POSException import ConflictError

import zodbsession
from zodbsession import outcomes, publisher
from zodbsession.errors import (
    CommitOutcomeUnknown,
    RequestBodyTooLarge,
    SessionBusy,
    SessionLimitReached,
    SessionTooLarge,
    SessionWaitTimeout,
    StorageUnavailable,
    StorageWriteFailed,
    UnstorableSessionValue,
)
from zodbsession.outcomes import ROWS, TABLE, answer_headers, classify


@pytest.mark.parametrize("module", [outcomes, publisher], ids=["outcomes", "publisher"])
def test_the_docstring_table_is_the_data_table(module):
    assert outcomes.render_table() in module.__doc__, (
        "paste python -c 'from zodbsession.outcomes import render_table; print(render_table())' "
        f"into {module.__name__}'s docstring")


def test_every_row_has_a_unique_name_and_a_reported_outcome_metrics_know():
    from zodbsession.metrics import OUTCOMES

    assert len(ROWS) == len(TABLE)
    reported = {row.reported for row in TABLE if row.reported is not None}
    assert reported <= set(OUTCOMES)
    assert [row.name for row in TABLE if row.retry] == ["conflict"]


CASES = {
    "body_too_large": (RequestBodyTooLarge(20, 10), False, False),
    "session_busy": (SessionBusy(5, 4, 3), False, False),
    "session_wait_timeout": (SessionWaitTimeout(2, 4, 3), False, False),
    "storage_unavailable": (StorageUnavailable("away"), False, False),
    "storage_unavailable/zeo": (ClientDisconnected("away"), True, False),
    "outcome_unknown": (CommitOutcomeUnknown("after the vote"), True, False),
    "conflict": (ConflictError("simulated"), True, False),
    "conflict/should_retry": (ValueError("a data manager says retry"), True, False),
    "gave_up": (ConflictError("simulated"), True, True),
    "invalid_session": (SessionTooLarge(10, 5), False, False),
    "invalid_session/unpicklable": (UnstorableSessionValue("k", TypeError("lock")), False, False),
    "session_cap": (SessionLimitReached(3, 3), False, False),
    "storage_write_failed": (StorageWriteFailed("disk full"), False, False),
    "app_exception": (RuntimeError("boom"), False, False),
    "app_exception/last": (KeyError("x"), False, True),
}


@pytest.mark.parametrize(("error", "retryable", "last"), CASES.values(), ids=CASES.keys())
def test_a_failure_gets_its_row(request, error, retryable, last):
    expected = request.node.callspec.id.split("/")[0]
    assert classify(error, retryable=retryable, last=last).name == expected


def test_every_failure_row_is_reached_by_some_case():
    reached = {name.split("/")[0] for name in CASES}
    failure_rows = {row.name for row in TABLE if row.match != "decided"}
    assert reached == failure_rows


def test_client_disconnected_is_not_retried_though_transient():
    assert isinstance(ClientDisconnected("away"), TransientError)
    row = classify(ClientDisconnected("away"), retryable=True, last=False)
    assert (row.name, row.retry) == ("storage_unavailable", False)


def test_an_errors_retry_after_replaces_the_rows():
    headers = dict(answer_headers(ROWS["session_busy"], SessionBusy(5, 4, 7)))
    assert headers["Retry-After"] == "7"
    assert dict(answer_headers(ROWS["session_cap"]))["Retry-After"] == "60"
    assert int(dict(answer_headers(ROWS["session_busy"]))["Content-Length"]) == len(
        ROWS["session_busy"].body.encode())


# -- layers ------------------------------------------------------------------------------

CORE = ["transact", "attempt", "outcomes", "retry", "commit", "locks", "errors", "observe", "registry"]
FRONT_DOORS_AND_ABOVE = {"publisher", "asgi", "cookies", "server", "cli", "workers", "admin", "config",
                         "db", "zeo", "demo", "flask", "pyramid", "django"}


def imported_modules(name: str) -> set[str]:
    path = Path(inspect.getfile(zodbsession)).with_name(f"{name}.py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("name", CORE)
def test_the_core_imports_no_front_door_server_or_zeo(name):
    imports = imported_modules(name)
    assert not {m for m in imports if m.split(".")[0] == "ZEO"}
    ours = {m.split(".")[1] for m in imports if m.startswith("zodbsession.")}
    assert not ours & FRONT_DOORS_AND_ABOVE, ours & FRONT_DOORS_AND_ABOVE


def test_the_wsgi_publisher_imports_neither_zeo_nor_the_server():
    imports = imported_modules("publisher")
    assert not {m for m in imports if m.split(".")[0] == "ZEO"}
    ours = {m.split(".")[1] for m in imports if m.startswith("zodbsession.")}
    assert not ours & {"server", "cli", "workers", "admin", "config", "db", "zeo"}
