"""Files only their owner can read: the database, its directory, its sockets.

A FileStorage holds every live session id in clear: any local user who can
read ``Data.fs`` can take over any logged-in session, and any local user who
can connect to a ZEO server can store a pickle the app servers will run.
So what zodbsession creates is private by default: directories 0700, files
0600 (sockets too, through the umask they are made under).

``private_umask`` is the process-wide switch: the command line sets it once,
at start-up, so that every file a command or a server makes later (the index
written at close, a pack's ``.old``, a truncation's copy, the ZEO socket) is
made private too. ``make_private_directory`` and ``private_files`` do the
same for a library user who opens a database from their own code. Files and
directories that already exist are left as they are, with one WARNING per
path when other users can read them (``warn_if_shared``): changing an
operator's deliberate modes would be worse than saying so (directories
others can list are not warned about: the files in them are).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: The bits a private file never has: anything for the group or for others.
SHARED_BITS = 0o077

_warned: set[str] = set()
_warned_lock = threading.Lock()


def private_umask() -> int:
    """Add ``SHARED_BITS`` to this process's umask for good; returns the previous umask."""
    previous = os.umask(SHARED_BITS)
    os.umask(previous | SHARED_BITS)
    return previous


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Files and sockets made inside are private (the umask, for the block only).

    The umask is the process's: call it where nothing else makes files at
    the same moment (opening a storage at start-up).
    """
    previous = os.umask(SHARED_BITS)
    os.umask(previous | SHARED_BITS)
    try:
        yield
    finally:
        os.umask(previous)


def make_private_directory(path: str) -> None:
    """Make *path* (and missing parents) if absent, the last one 0700; an existing one is left alone.

    No warning for an existing directory others can list: the files in it
    are what matter, and each is checked on its own (``warn_if_shared``).
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    with private_files():
        os.makedirs(path, mode=0o700, exist_ok=True)


def warn_if_shared(path: str) -> bool:
    """Log one WARNING (per path, per process) if other users can read *path*; whether they can."""
    path = os.path.abspath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if not mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        return False
    with _warned_lock:
        if path in _warned:
            return True
        _warned.add(path)
    wanted = "700" if stat.S_ISDIR(mode) else "600"
    log.warning("%s is readable by other users (mode %o): it holds live session ids; "
                "chmod %s %s unless that is intended", path, stat.S_IMODE(mode), wanted, path)
    return True
