"""Where the ASGI door's ZODB work runs: worker threads, one step at a time per connection.

``WorkerThreads`` runs a blocking step (open, commit, close, or the
application's own ``run_in_connection`` function) in a thread pool, in a
copy of the calling task's context, and never lets a cancelled task go on
while its step still runs. ``ConnectionRunner`` is one attempt's
``run_in_connection``: the attempt's connection, one call at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from persistent import Persistent

T = TypeVar("T")


class WorkerThreads:
    """Runs blocking steps in *executor*, or in a pool of its own of *size* threads.

    Threading: ``run`` is called from the event loop; the steps run in the
    pool's threads. A step using a connection must not overlap another
    step on it: callers await one before starting the next, and a cancelled
    caller still waits for its step (``run``).

    ``hops`` counts the steps run so far (one ``run_in_executor`` each): the
    bench and the tests read it to count the thread hops of a request.
    """

    def __init__(self, executor: Executor | None, size: int) -> None:
        #: Steps handed to a worker thread so far (only the loop changes it).
        self.hops = 0
        self.own = executor is None
        self.executor = executor if executor is not None else ThreadPoolExecutor(
            size, thread_name_prefix="zodbsession-asgi")

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, in a copy of this task's context.

        A cancelled task (a server's shutdown) still waits for the step to
        end before it goes on: a thread cannot be stopped, and the next step
        (closing the connection) must not use the connection beside it.
        """
        loop = asyncio.get_running_loop()
        self.hops += 1
        context = contextvars.copy_context()
        future = loop.run_in_executor(self.executor, functools.partial(context.run, fn, *args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            raise

    def close(self) -> None:
        """Stop the pool if it is our own (an executor given is its owner's to stop)."""
        if self.own:
            self.executor.shutdown(wait=True)


class ConnectionRunner:
    """One attempt's ``run_in_connection``: *connection* (a callable returning it), one call at a time."""

    __slots__ = ("_threads", "_connection", "_lock")

    def __init__(self, threads: WorkerThreads, connection: Callable[[], Any]) -> None:
        self._threads = threads
        self._connection = connection
        self._lock = asyncio.Lock()

    async def __call__(self, fn: Callable[..., T], /, *args: Any) -> T:
        connection = self._connection()
        if connection is None:
            raise RuntimeError("the request's connection is closed: run_in_connection works only "
                               "while the request runs")
        # Two calls at once (asyncio.gather) would use the connection from two threads.
        async with self._lock:
            return await self._threads.run(call_loaded, fn, connection, *args)


def call_loaded(fn: Callable[..., T], connection: Any, *args: Any) -> T:
    """``fn(connection, *args)``; a persistent object it returns is loaded here, not in the loop."""
    result = fn(connection, *args)
    if isinstance(result, Persistent):
        result._p_activate()
    return result
