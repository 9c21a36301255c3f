"""The outcome table: one data table, the docstrings drawn from it, every row reachable.

The core's layering is ``tests/project/test_layers.py``'s.
"""

from __future__ import annotations

import pytest
from transaction.interfaces import TransientError
from ZEO.Exceptions import ClientDisconnected
from ZODB.POSException import ConflictError

from zodbsession.core import outcomes
from zodbsession.core.errors import (
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
from zodbsession.core.outcomes import ROWS, TABLE, answer_headers, classify
from zodbsession.web.wsgi import publisher


@pytest.mark.parametrize("module", [outcomes, publisher], ids=["outcomes", "publisher"])
def test_the_docstring_table_is_the_data_table(module):
    assert outcomes.render_table() in module.__doc__, (
        "paste python -c 'from zodbsession.core.outcomes import render_table; print(render_table())' "
        f"into {module.__name__}'s docstring")


def test_every_row_has_a_unique_name_and_a_reported_outcome_metrics_know():
    from zodbsession.ops.metrics import OUTCOMES

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
