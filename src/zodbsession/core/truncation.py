"""What FileStorage cuts off a torn file: one log line, the copies in one place, pruned.

A FileStorage opened for writing after a crash (or a full disk) finds an
unfinished transaction at its end, cuts it off and saves the bytes in
``Data.fs.tr0`` (``.tr1``... when that exists), with two WARNINGs that say
neither how much was dropped nor whether it matters. Nothing ever removes those files: a crash loop
leaves one per restart beside the data file.

``kept_truncations`` wraps the opening: it silences ZODB's own line, moves
each new copy (and any older ``Data.fs.trN`` left beside the file) into
``truncated/`` next to the data file, named for the file and the moment, logs
one WARNING per copy (how many bytes were dropped, from which offset, and
where they are kept) and keeps only the newest ``KEEP`` copies. The bytes cut
off were never acknowledged: a commit answers only after its transaction is
whole on disk. ``copies`` lists them, for ``zodbsession verify``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Iterator

from zodbsession.core.private import make_private_directory

log = logging.getLogger(__name__)

#: Copies kept per data file; older ones are removed when a new one is made.
KEEP = 5
#: The directory, beside the data file, holding the copies.
DIRECTORY = "truncated"

#: ZODB's own lines about it, replaced by ours.
_ZODB_LINES = ("Writing truncated data from", "truncated, possibly due to damaged records")


def copies_directory(path: str) -> str:
    """Where the copies of the data file at *path* are kept."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), DIRECTORY)


def copies(path: str) -> list[str]:
    """The kept copies of what was cut off the file at *path*, oldest first, then stray ``.trN`` files."""
    name = os.path.basename(path)
    kept = glob.glob(os.path.join(glob.escape(copies_directory(path)), glob.escape(name) + ".*.tr"))
    stray = glob.glob(glob.escape(os.path.abspath(path)) + ".tr[0-9]*")
    return sorted(kept) + sorted(stray)


class _DropZodbLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(line in str(record.msg) for line in _ZODB_LINES)


@contextlib.contextmanager
def kept_truncations(path: str) -> Iterator[None]:
    """Open the FileStorage at *path* inside: what it cuts off is logged once and kept in ``truncated/``."""
    path = os.path.abspath(path)
    size = os.path.getsize(path) if os.path.exists(path) else 0
    before = set(_stray(path))
    zodb_log = logging.getLogger("ZODB.FileStorage")
    quiet = _DropZodbLine()
    zodb_log.addFilter(quiet)
    try:
        yield
    finally:
        zodb_log.removeFilter(quiet)
    new = sorted(set(_stray(path)) - before)
    for leftover in sorted(before):
        _keep(path, leftover, None)
    for copy in new:
        _keep(path, copy, size)
    if before or new:
        _prune(path)


def _stray(path: str) -> list[str]:
    return glob.glob(glob.escape(path) + ".tr[0-9]*")


def _keep(path: str, copy: str, size_before: int | None) -> None:
    dropped = os.path.getsize(copy)
    make_private_directory(copies_directory(path))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(os.path.getmtime(copy)))
    target = os.path.join(copies_directory(path), f"{os.path.basename(path)}.{stamp}.tr")
    n = 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(copies_directory(path), f"{os.path.basename(path)}.{stamp}-{n}.tr")
    os.replace(copy, target)
    if size_before is None:
        log.warning("%s: moved an earlier truncation's copy (%d bytes) to %s", path, dropped, target)
    else:
        log.warning("%s: dropped %d bytes of an unfinished, unacknowledged transaction at offset %d "
                    "(a crash or a full disk while committing); the bytes are kept in %s, with at "
                    "most %d such copies", path, dropped, size_before - dropped, target, KEEP)


def _prune(path: str) -> None:
    name = os.path.basename(path)
    kept = sorted(glob.glob(os.path.join(glob.escape(copies_directory(path)), glob.escape(name) + ".*.tr")),
                  key=os.path.getmtime)
    for old in kept[:-KEEP] if len(kept) > KEEP else []:
        with contextlib.suppress(OSError):
            os.unlink(old)
