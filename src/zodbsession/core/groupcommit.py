"""A FileStorage whose concurrent commits share fsyncs, and whose readers see only durable data.

Stock ``FileStorage`` takes one ``fsync`` per commit inside its commit lock,
so commits are strictly serial at the disk's sync latency although the disk
gives several concurrent syncers many times the syncs of one.
``GroupCommitFileStorage`` keeps every guarantee of the stock storage and
moves the fsync out of the commit lock:

``fsync="always"`` (the default, durable)
    ``tpc_finish`` writes the transaction (flushed to the operating system),
    updates the index (so conflict detection sees it at once: the next
    writer of an object it changed gets a ``ConflictError`` or a merge, as
    before), releases the commit lock, and then waits until an fsync covers
    it. One waiter at a time is the *leader*: it fsyncs everything finished
    so far, then *publishes* the synced transactions in commit order (their
    invalidations to the other connections, then ``lastTransaction``) and
    wakes the rest. A transaction is therefore visible to any reader, in
    this process or through a ZEO server, only once it is on disk: no
    response, a write's or a read's, can carry data a power cut takes back,
    and no read-side wait is needed. A commit's ``tpc_finish`` returns only
    once its own transaction is durable and published, so the writer's
    response also leaves after that (read-your-writes holds).

``fsync="interval"`` (relaxed, opt-in)
    Commits are published at once with no fsync; a background thread
    fsyncs every ``fsync_interval`` seconds when something was written. A
    process crash loses nothing (the data is in the operating system's page
    cache); a power cut loses at most the last interval's commits.

After each fsync the storage writes the offset it covered to
``<file>.synced`` (not itself fsynced: it is a lower bound once on disk,
and exact in the page cache after a process crash). ``tailrepair`` uses it
when a file does not open after a power cut; tests use it to tear the file
only where a power cut could.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from ZODB.FileStorage import FileStorage

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval"]
FSYNC_POLICIES: tuple[FsyncPolicy, ...] = ("always", "interval")

#: Suffix of the file holding the last synced offset (8 bytes, big-endian).
SYNCED_SUFFIX = ".synced"

#: Seconds a leader waits, at most, for commits already under way to finish
#: before its fsync, so that one sync covers them too (PostgreSQL's commit_delay).
COMMIT_DELAY = 0.0005


def read_synced_offset(path: str) -> int | None:
    """The last offset of *path* its storage reported synced, or None if unknown."""
    try:
        with open(path + SYNCED_SUFFIX, "rb") as marker:
            data = marker.read(8)
    except OSError:
        return None
    return struct.unpack(">Q", data)[0] if len(data) == 8 else None


class _Pending:
    """One finished transaction waiting for its fsync and its publication."""

    __slots__ = ("callback", "seq", "tid")

    def __init__(self, callback: Callable[[bytes], object] | None) -> None:
        self.callback = callback
        self.tid = b""
        self.seq = 0


class GroupCommitFileStorage(FileStorage):  # type: ignore[misc]
    """``FileStorage`` with the fsync out of the commit lock: see the module docstring."""

    def __init__(self, file_name: str, *args: Any, fsync: FsyncPolicy = "always",
                 fsync_interval: float = 1.0, **kw: Any) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES} (got {fsync!r})")
        self.fsync_policy: FsyncPolicy = fsync
        self.fsync_interval = fsync_interval
        #: Counts for the bench and the tests: fsyncs taken, transactions committed.
        self.fsyncs = 0
        self.commits = 0
        # One lock, two conditions: followers wait for the durable position,
        # the leader (only) for the commits under way to leave; a commit
        # leaving wakes the leader alone, not every waiting follower.
        lock = threading.Lock()
        self._sync_cond = threading.Condition(lock)
        self._leader_cond = threading.Condition(lock)
        self._syncing = False
        self._waiters: deque[tuple[int, threading.Event]] = deque()
        self._sync_error: BaseException | None = None
        self._finished_seq = 0
        self._durable_seq = 0
        self._committing = 0  # transactions between tpc_begin and tpc_finish/abort
        self._pending: deque[_Pending] = deque()
        self._binding: _Pending | None = None
        self._synced_pos = 0
        self._marker_fd: int | None = None
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        try:
            super().__init__(file_name, *args, **kw)
        except BaseException:
            # FileStorage leaves its lock and file open when its scan fails;
            # release them, so that the file can be repaired and opened again.
            for name in ("_file", "_lock_file"):
                handle = self.__dict__.get(name)
                if handle is not None:
                    handle.close()
            raise
        if not self._is_read_only:
            self._marker_fd = os.open(file_name + SYNCED_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
            self._sync_file()  # what the file holds now is the durable start
            if fsync == "interval":
                self._flusher = threading.Thread(target=self._flush_periodically,
                                                 name="zodbsession-fsync", daemon=True)
                self._flusher.start()

    def lastTransaction(self) -> bytes:  # noqa: N802 (ZODB's spelling)
        """The id of the last transaction published, read without the storage's lock.

        ``BaseStorage`` takes the lock, which a commit holds while it writes
        into the file; every transaction's begin asks this, and the ASGI door
        begins reads on its event loop, which must not wait behind a commit.
        Reading one attribute is atomic, and ``_ltid`` moves only after the
        index and the invalidations of what it names (ZEO's and
        MappingStorage's ``lastTransaction`` take no lock either).
        """
        ltid: bytes = self._ltid
        return ltid

    # -- the commit path ---------------------------------------------------------------

    def tpc_begin(self, transaction: Any, tid: Any = None, status: str = " ") -> None:
        # Counted from before the commit lock: a leader lets one fsync cover
        # the commits queued behind that lock too (see _await_durable).
        with self._sync_cond:
            self._committing += 1
        try:
            super().tpc_begin(transaction, tid, status)
        except BaseException:
            self._left_commit()
            raise

    def tpc_abort(self, transaction: Any) -> None:
        was_ours = transaction is self._transaction
        super().tpc_abort(transaction)
        if was_ours:
            self._left_commit()

    def _left_commit(self) -> None:
        with self._sync_cond:
            self._committing -= 1
            self._leader_cond.notify()

    def tpc_finish(self, transaction: Any, f: Callable[[bytes], object] | None = None) -> bytes:
        if transaction is not self._transaction:
            return super().tpc_finish(transaction, f)  # type: ignore[no-any-return]  # it raises
        if self.fsync_policy == "interval":
            try:
                return super().tpc_finish(transaction, f)  # type: ignore[no-any-return]
            finally:
                self._left_commit()
        entry = _Pending(f)

        def bind(tid: bytes) -> None:  # called by FileStorage under its lock, before _finish
            entry.tid = tid
            self._binding = entry

        try:
            tid: bytes = super().tpc_finish(transaction, bind)
        finally:
            self._binding = None
            self._left_commit()
        self._await_durable(entry.seq)
        return tid

    def _finish_finish(self, tid: bytes) -> None:
        # FileStorage's, without the fsync and (in "always") without advancing
        # lastTransaction: the leader does both once the fsync covers this.
        self._file.flush()
        self._pos = self._nextpos
        self._index.update(self._tindex)
        self.commits += 1
        if self.fsync_policy == "interval":
            self._ltid = tid
        else:
            entry = self._binding
            if entry is None:  # a commit without our tpc_finish (none in ZODB): publish as stock
                entry = _Pending(None)
                entry.tid = tid
            self._finished_seq += 1
            entry.seq = self._finished_seq
            self._pending.append(entry)
        self._blob_tpc_finish()

    def _await_durable(self, seq: int) -> None:
        """Return once transaction *seq* is synced and published; lead the sync if nobody does."""
        with self._sync_cond:
            while self._durable_seq < seq:
                if self._sync_error is not None:
                    raise OSError(f"the storage could not sync its file: {self._sync_error}")
                if self._syncing:
                    # Woken only when covered, or to lead the next sync: a
                    # notify_all would wake every follower after every sync.
                    woken = threading.Event()
                    self._waiters.append((seq, woken))
                    self._sync_cond.release()
                    try:
                        woken.wait()
                    finally:
                        self._sync_cond.acquire()
                    continue
                self._syncing = True
                break
            else:
                return
            # Commits under way (voted or voting) finish within microseconds
            # unless they wait for the GIL: let one fsync cover them too.
            deadline = time.monotonic() + COMMIT_DELAY
            while self._committing and time.monotonic() < deadline:
                self._leader_cond.wait(max(deadline - time.monotonic(), 0))
        try:
            self._sync_and_publish()
        except BaseException as exc:
            log.critical("fsync of %s failed; no further commit is acknowledged", self._file_name,
                         exc_info=True)
            with self._sync_cond:
                self._sync_error = exc
            raise
        finally:
            with self._sync_cond:
                self._syncing = False
                self._wake_waiters()
                self._sync_cond.notify_all()  # close() waiting for the sync to end

    def _wake_waiters(self) -> None:
        """Wake the followers the last sync covered, and the first one it did not, to lead."""
        uncovered: deque[tuple[int, threading.Event]] = deque()
        for seq, woken in self._waiters:
            if seq <= self._durable_seq or self._sync_error is not None:
                woken.set()
            else:
                uncovered.append((seq, woken))
        if uncovered:
            uncovered.popleft()[1].set()
        self._waiters = uncovered

    def _sync_and_publish(self) -> None:
        target = self._sync_file()
        with self._lock:
            while self._pending and self._pending[0].seq <= target:
                entry = self._pending.popleft()
                if entry.callback is not None:
                    entry.callback(entry.tid)  # the invalidations, before lastTransaction moves
                self._ltid = entry.tid
        with self._sync_cond:
            self._durable_seq = max(self._durable_seq, target)

    def _sync_file(self) -> int:
        """fsync what is written so far, record its offset; the last finished seq it covers."""
        with self._lock:
            target, pos = self._finished_seq, self._pos
            fd = os.dup(self._file.fileno())  # a pack may swap the file meanwhile
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.fsyncs += 1
        if self._marker_fd is not None and pos != self._synced_pos:
            os.pwrite(self._marker_fd, struct.pack(">Q", pos), 0)
            self._synced_pos = pos
        return target

    # -- interval mode, pack, close ----------------------------------------------------

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            try:
                with self._lock:
                    written = self._pos
                if written != self._synced_pos:
                    self._sync_file()
            except Exception:  # the file closed under us, or the disk failed
                if self._stop.is_set():
                    return
                log.exception("periodic fsync of %s failed", self._file_name)

    def pack(self, t: Any, referencesf: Any, gc: Any = None) -> Any:
        """Pack as FileStorage does, then sync the new file at once."""
        result = super().pack(t, referencesf, gc)
        if not self._is_read_only:
            self._sync_file()
        return result

    def close(self) -> None:
        """Sync and publish everything written, then close (the index saved covers synced data)."""
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(10)
        if self._marker_fd is not None and getattr(self, "_file", None) is not None \
                and not self._file.closed:
            try:
                with self._sync_cond:
                    while self._syncing:
                        self._sync_cond.wait()
                    self._syncing = True
                try:
                    self._sync_and_publish()
                finally:
                    with self._sync_cond:
                        self._syncing = False
                        self._wake_waiters()
                        self._sync_cond.notify_all()
            except Exception:
                log.exception("final fsync of %s failed", self._file_name)
        super().close()
        if self._marker_fd is not None:
            os.close(self._marker_fd)
            self._marker_fd = None
