"""Running one measurement in a fresh interpreter, so that its memory is its own.

Peak RSS (``ru_maxrss``) only ever grows within a process, and a forked child
starts from its parent's; a *spawned* child starts from nothing, so its peak
is the peak of the work it was given. Building a million sessions in a child
also gives their memory back to the system when the child exits.
"""

from __future__ import annotations

import multiprocessing
import resource
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def in_subprocess(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``func(*args, **kwargs)`` in a freshly spawned interpreter; its result.

    *func* must be a module-level function of an importable module, and its
    arguments and result picklable.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(func, *args, **kwargs).result()


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
