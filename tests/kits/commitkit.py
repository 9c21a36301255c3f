"""Data managers that misbehave at one chosen step of the two-phase commit.

A test joins one to a request's real transaction
(``transaction_manager.get().join(VoteFails(error))``) to make that commit
fail, or wait, exactly where the scenario needs: nothing is mocked, the
transaction, the ZODB connection and the code under test run as they do in
production. The sort key decides whether the double votes and finishes
before ZODB's connection or after it: ``AFTER`` ("~" sorts after every
storage's key) is the default, ``BEFORE`` ("\\x00") goes first.
"""

from __future__ import annotations

import threading

#: Sort keys placing a data manager after, or before, ZODB's connection in the commit.
AFTER = "~ after the connection"
BEFORE = "\x00 before the connection"

#: Seconds a held vote waits for its gate at most (never asserted on: a bound against hangs).
WAIT = 10


class QuietDataManager:
    """Joins a transaction and does nothing at any step; subclasses pick the step that misbehaves."""

    transaction_manager = None

    def __init__(self, key: str = AFTER) -> None:
        self.key = key

    def sortKey(self) -> str:  # noqa: N802 (the IDataManager spelling)
        return self.key

    def abort(self, txn) -> None: ...

    def tpc_begin(self, txn) -> None: ...

    def commit(self, txn) -> None: ...

    def tpc_vote(self, txn) -> None: ...

    def tpc_finish(self, txn) -> None: ...

    def tpc_abort(self, txn) -> None: ...


class VoteFails(QuietDataManager):
    """Refuses in ``tpc_vote`` with *error*: nothing was finished, so the whole commit aborts."""

    def __init__(self, error: BaseException, key: str = AFTER) -> None:
        super().__init__(key)
        self.error = error

    def tpc_vote(self, txn) -> None:
        raise self.error


class FinishFails(QuietDataManager):
    """Raises *error* in ``tpc_finish``, after every vote passed: the commit's outcome is unknown."""

    def __init__(self, error: BaseException, key: str = AFTER) -> None:
        super().__init__(key)
        self.error = error

    def tpc_finish(self, txn) -> None:
        raise self.error


class Gate:
    """A threading.Event the test holds (``opened``), with a second one saying someone waits at it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()

    def wait(self) -> None:
        """Say we are here, then wait until the test opens the gate (at most ``WAIT`` seconds)."""
        self.reached.set()
        if not self.opened.wait(WAIT):
            raise RuntimeError("the test never opened the gate")


class HeldVote(QuietDataManager):
    """Its vote waits at *gate* (a fresh one by default): it holds its request's commit where it runs.

    ``reached`` and ``opened`` are the gate's events; ``finished`` turns true
    when the commit it held went through.
    """

    def __init__(self, gate: Gate | None = None, key: str = AFTER) -> None:
        super().__init__(key)
        self.gate = gate if gate is not None else Gate()
        self.reached, self.opened = self.gate.reached, self.gate.opened
        self.finished = False

    def tpc_vote(self, txn) -> None:
        self.gate.wait()

    def tpc_finish(self, txn) -> None:
        self.finished = True
