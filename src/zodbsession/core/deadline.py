"""A deadline on each wait for the storage server: a frozen server gives a bounded 503.

A ZEO client notices a server that went away (the connection drops) and
then waits at most the URI's ``wait_timeout``. A server that is still
connected but does not answer (a stopped process, SIGSTOP, a machine
swapping to death) is not noticed at all: each call waits for its reply
without end, and so does every request, cookieless ones included, and the
thread pool fills up.

``bound_zeo_calls`` puts a deadline on every synchronous call a ZEO client
makes for a request (the round trip at ``begin``, loads, the vote, the miss
path's ``lastTransaction``): past *timeout* seconds without a reply the
call raises ZEO's own ``ClientDisconnected``, which the front doors answer
503 with ``Retry-After`` (the ``storage_unavailable`` row), nothing
committed. The reply, if it ever comes, is taken by ZEO's I/O thread and
dropped; the next request uses the connection as before, so service is back
the moment the server answers again. The one call left unbounded is
``tpc_finish``: once it is sent the transaction may be committed, and giving
up on it would only turn a slow commit into an unknown one.

RelStorage waits in its database driver; bound those with the database's own
settings (PostgreSQL's ``statement_timeout`` and ``connect_timeout``).
"""

from __future__ import annotations

from typing import Any

#: Coroutines of ZEO's client that are never bounded (see the module docstring).
UNBOUNDED = frozenset({"tpc_finish_co", "close_co"})


def bound_zeo_calls(storage: Any, timeout: float) -> bool:
    """Give the ZEO ``ClientStorage`` *storage* a deadline of *timeout* seconds per call.

    Returns whether it did (False for another storage, or *timeout* <= 0).
    """
    kind = type(storage)
    if timeout <= 0 or not (kind.__module__ == "ZEO.ClientStorage" and kind.__name__ == "ClientStorage"):
        return False
    runner = storage._server
    io_call = runner.io_call
    if getattr(io_call, "zodbsession_deadline", None) is not None:
        return True
    from ZEO.Exceptions import ClientDisconnected

    def bounded_io_call(coro: Any, wait: bool = True) -> Any:
        name = getattr(getattr(coro, "cr_code", None), "co_name", "")
        if not wait or name in UNBOUNDED:
            return io_call(coro, wait)
        future = io_call(coro, wait=False)
        try:
            return future.result(timeout)
        except TimeoutError:
            raise ClientDisconnected(
                f"the storage server did not answer within {timeout:g} s (storage.request_timeout); "
                "it may be frozen or overloaded") from None
        finally:
            del future

    bounded_io_call.zodbsession_deadline = timeout  # type: ignore[attr-defined]
    runner.io_call = bounded_io_call
    return True
