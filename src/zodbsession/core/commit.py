"""How the request-transaction core ends a request's transaction: commit, abort, or leave it to its owner.

``commit`` tells a failure in the commit's finish phase (some storages may
have committed: the outcome is unknown) from one before every vote passed
(nothing was committed). ``nothing_joined`` lets a read abort instead of
committing an empty transaction. ``in_transaction`` and ``at_rest``
are the other questions the core asks of the ``transaction`` and ZODB
packages' private state (here and nowhere else). ``close_when_transaction_ends`` gives a
connection back once an outer transaction, which the publisher does not own,
has ended. They live apart from the publisher because they speak only the
``transaction`` package's protocol, never WSGI.
"""

from __future__ import annotations

import logging
from typing import Any

import transaction
from transaction.interfaces import NoTransaction
from ZODB.POSException import ConnectionStateError

from zodbsession.core.errors import CommitOutcomeUnknown, StorageWriteFailed

log = logging.getLogger(__name__)


class VoteWitness:
    """A data manager that votes last and so tells when every vote has passed.

    A failure after it voted happened in the finish phase, where some
    storages may have committed already: the outcome is unknown.
    """

    transaction_manager = None

    def __init__(self) -> None:
        self.voted = False

    def sortKey(self) -> str:  # noqa: N802 (the IDataManager spelling)
        return "\U0010ffff zodbsession vote witness"

    def tpc_begin(self, txn: Any) -> None: ...

    def commit(self, txn: Any) -> None: ...

    def tpc_vote(self, txn: Any) -> None:
        self.voted = True

    def tpc_finish(self, txn: Any) -> None: ...

    def tpc_abort(self, txn: Any) -> None: ...

    def abort(self, txn: Any) -> None: ...


def commit(tm: transaction.TransactionManager) -> None:
    """Commit *tm*'s transaction, telling the ways it can fail apart.

    Raises ``CommitOutcomeUnknown`` for a failure after every vote,
    ``StorageWriteFailed`` for an ``OSError`` before that (nothing was
    written), and anything else as it came.
    """
    witness = VoteWitness()
    tm.get().join(witness)
    try:
        tm.commit()
    except Exception as exc:
        if witness.voted:
            raise CommitOutcomeUnknown(f"commit failed after every vote: {exc!r}") from exc
        if isinstance(exc, OSError):
            # FileStorage writes the transaction into Data.fs in its vote and
            # cuts it off again when that fails: nothing was committed.
            raise StorageWriteFailed(f"the storage could not write the commit: {exc}") from exc
        raise


def anything_joined(txn: transaction.Transaction) -> bool:
    """Whether any data manager joined *txn* (a ZODB connection at its first write, ...).

    The transaction package has no public way to ask; this reads its
    ``_resources``, here and nowhere else.
    """
    return bool(getattr(txn, "_resources", ()))


def nothing_joined(txn: transaction.Transaction) -> bool:
    """Whether committing *txn* would change nothing: no data manager, no hook, not doomed.

    A ZODB connection joins at its first write, other data managers when
    used. The transaction package has no public way to ask whether one
    joined; without its ``_resources`` (and hook lists) this says False, and
    the publisher commits as it always did.
    """
    try:
        # Read directly (the public getters build iterators): a read pays
        # for this on every request.
        if txn._resources or txn._before_commit or txn._after_commit:
            return False
    except AttributeError:  # another transaction package: count it as joined
        return False
    return not txn.isDoomed()


def in_transaction(tm: transaction.TransactionManager) -> bool:
    """Whether *tm* has a transaction begun and not yet ended (asked without raising ``NoTransaction``)."""
    try:
        return tm._txn is not None
    except AttributeError:  # another manager: ask it the public way
        try:
            tm.get()
        except NoTransaction:
            return False
        return True


def at_rest(connection: Any, tm: transaction.TransactionManager) -> bool:
    """Whether *connection* may wait for its thread's next request instead of being closed.

    Its manager *tm* has no transaction (nothing begun, nothing joined: what
    the pool holds) and no synchronizer but the connection's own (one per
    database it has opened: an application's would otherwise hear the next
    request's transactions), and the application gave the connection no
    ``onCloseCallback``, which must run when the request's connection is
    closed. One call for ``TransactionCore.close``'s question on every read.
    """
    try:
        # (``_synchs`` is transaction's WeakSet; its ``data`` a WeakValueDictionary.)
        if tm._txn is not None or len(tm._synchs.data) != len(connection.connections):
            return False
    except AttributeError:  # another manager: ask it the public way, and never keep it
        return False
    return getattr(connection, "_Connection__onCloseCallbacks", None) is None


def abort_quietly(tm: transaction.TransactionManager) -> None:
    """Abort, logging rather than raising a failure: an error is already being handled.

    An explicit manager with nothing begun has nothing to abort: that is no failure.
    """
    try:
        tm.abort()
    except NoTransaction:
        pass
    except Exception:
        log.exception("aborting the transaction failed")


def close_when_transaction_ends(connection: Any) -> None:
    """Close *connection* now, or when the outer transaction it has joined ends."""
    try:
        connection.close()
    except ConnectionStateError:
        # Still joined to the outer transaction: give it back when that ends.
        # Once only: a failed commit runs the after-commit hooks and then the
        # outer abort runs the after-abort ones; a second close() would hit
        # the connection after the pool lent it to another request (it sets
        # its transaction_manager to None and returns it to the pool again).
        closed: list[bool] = []

        def close_once(*args: object) -> None:
            if not closed:
                closed.append(True)
                connection.close()

        txn = connection.transaction_manager.get()
        txn.addAfterCommitHook(close_once)
        txn.addAfterAbortHook(close_once)
