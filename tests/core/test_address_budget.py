"""The per-address budget of new sessions and logins: a token bucket per client address."""

from __future__ import annotations

import pytest

from zodbsession import SessionManager
from zodbsession.core.budget import AddressBudget, client_address
from zodbsession.core.errors import SessionLimitReached, TooManyNewSessions
from zodbsession.testing import ManualClock


def test_an_address_gets_its_burst_then_one_per_interval_and_others_are_untouched():
    clock = ManualClock()
    budget = AddressBudget(6, clock=clock)  # one every 10 s
    for _ in range(6):
        budget.charge("127.0.0.2")
    with pytest.raises(TooManyNewSessions) as refused:
        budget.charge("127.0.0.2")
    assert refused.value.retry_after == 10
    assert isinstance(refused.value, SessionLimitReached)  # answered like the cap: 503, Retry-After
    budget.charge("127.0.0.3")  # another address is not affected
    clock.advance(10)
    budget.charge("127.0.0.2")
    with pytest.raises(TooManyNewSessions):
        budget.charge("127.0.0.2")


def test_no_address_and_a_zero_budget_are_never_charged():
    budget = AddressBudget(1)
    for _ in range(10):
        budget.charge(None)
    zero = AddressBudget(0)
    for _ in range(10):
        zero.charge("10.0.0.1")


def test_the_address_comes_from_the_environ_or_the_asgi_scope():
    assert client_address({"REMOTE_ADDR": "10.1.2.3"}) == "10.1.2.3"
    assert client_address({"type": "http", "client": ("10.1.2.4", 5555)}) == "10.1.2.4"
    assert client_address({}) is None and client_address(None) is None


def test_the_manager_charges_only_while_a_cap_is_set():
    assert SessionManager(new_per_address_per_minute=1)._budget is None
    capped = SessionManager(max_sessions=10, new_per_address_per_minute=1)
    capped.charge_new("10.0.0.1")
    with pytest.raises(TooManyNewSessions):
        capped.charge_new("10.0.0.1")


def test_budgets_on_one_shared_table_spend_one_budget_between_forked_processes():
    """Two processes, as ``serve --workers 2``: what one spends, the other cannot."""
    import os

    from zodbsession.core.budget import SharedBuckets

    table = SharedBuckets(slots=64)
    clock = ManualClock()
    pid = os.fork()
    if pid == 0:  # the other worker spends 4 of the address's 6
        code = 1
        try:
            budget = AddressBudget(6, clock=clock, shared=table)
            for _ in range(4):
                budget.charge("127.0.0.2")
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    budget = AddressBudget(6, clock=clock, shared=table)
    budget.charge("127.0.0.2")
    budget.charge("127.0.0.2")
    with pytest.raises(TooManyNewSessions) as refused:
        budget.charge("127.0.0.2")
    assert refused.value.retry_after == 10
    for _ in range(6):
        budget.charge("127.0.0.3")  # another address has its own


def test_a_shared_table_full_of_other_addresses_forgets_the_stalest_and_never_refuses_a_newcomer():
    from zodbsession.core.budget import SharedBuckets

    clock = ManualClock()
    budget = AddressBudget(1, clock=clock, shared=SharedBuckets(slots=4))
    for n in range(50):
        budget.charge(f"10.0.0.{n}")  # each its first: never refused, whatever it displaces
        clock.advance(0.001)
