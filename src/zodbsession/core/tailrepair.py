"""Cutting off a FileStorage's torn tail after a power cut, and nothing that was ever synced.

With group commit several finished transactions may sit past the last fsync,
and a power cut can leave any part of them on disk: the file cut short,
zeros or garbage from some point on, a page missing in the middle. Stock
FileStorage truncates an unfinished *last* transaction on opening, but it
refuses to open (``CorruptedError``) a file whose damage is followed by an
intact end, and it does not look inside records, so a record whose pickle
was torn would be served as the object's current state.

``check_tail`` scans the transactions from the last offset the storage
reported synced (``<file>.synced``, see ``groupcommit``) to the end of the
file: headers, lengths, each data record's place, and that every record's
two pickles parse. The first transaction that fails, and everything after
it, was never synced, so it was never acknowledged and never seen by a
reader (both wait for the fsync): ``repair_tail`` moves it to
``<file>.torn-<time>`` and truncates the file there. Damage *before* the
synced offset is not a torn tail; it is left to FileStorage, which refuses
the file, as it always did.
"""

from __future__ import annotations

import logging
import os
import pickletools
import struct
import time
from io import BytesIO
from typing import Any, BinaryIO

from ZODB.FileStorage.FileStorage import CorruptedFileStorageError
from ZODB.FileStorage.format import DATA_HDR, DATA_HDR_LEN, TRANS_HDR, TRANS_HDR_LEN, CorruptedError

from zodbsession.core.groupcommit import GroupCommitFileStorage, read_synced_offset

log = logging.getLogger(__name__)

#: Bytes the file format starts with ("FS21"); the first transaction follows.
FILE_HEADER_LEN = 4


def check_tail(path: str, start: int) -> int:
    """The offset of the first damaged or unfinished transaction at or after *start*, or the file's size."""
    with open(path, "rb") as data:
        size = os.fstat(data.fileno()).st_size
        pos = max(start, FILE_HEADER_LEN)
        previous_tid = b""
        while pos < size:
            data.seek(pos)
            header = data.read(TRANS_HDR_LEN)
            if len(header) < TRANS_HDR_LEN:
                return pos
            tid, length, status, ulen, dlen, elen = struct.unpack(TRANS_HDR, header)
            end = pos + length
            if (end + 8 > size or status not in b" up" or tid <= previous_tid
                    or length < TRANS_HDR_LEN + ulen + dlen + elen):
                return pos
            data.seek(end)
            if struct.unpack(">Q", data.read(8))[0] != length:
                return pos
            if status != b"u" and not _records_sound(data, pos, pos + TRANS_HDR_LEN + ulen + dlen + elen,
                                                     end, tid):
                return pos
            previous_tid = tid
            pos = end + 8
        return pos


def _ends_a_transaction(path: str, offset: int) -> bool:
    """Whether a transaction of this file ends at *offset* (its redundant length says so)."""
    if offset == FILE_HEADER_LEN:
        return True
    if offset < FILE_HEADER_LEN + TRANS_HDR_LEN + 8:
        return False
    with open(path, "rb") as data:
        data.seek(offset - 8)
        length = struct.unpack(">Q", data.read(8))[0]
        start = offset - 8 - length
        if start < FILE_HEADER_LEN:
            return False
        data.seek(start)
        header = data.read(TRANS_HDR_LEN)
    return len(header) == TRANS_HDR_LEN and bool(struct.unpack(TRANS_HDR, header)[1] == length)


def _records_sound(data: BinaryIO, txn_pos: int, pos: int, end: int, tid: bytes) -> bool:
    read, seek = data.read, data.seek
    while pos < end:
        seek(pos)
        header = read(DATA_HDR_LEN)
        if len(header) < DATA_HDR_LEN:
            return False
        _oid, record_tid, _prev, tloc, vlen, plen = struct.unpack(DATA_HDR, header)
        record_end = pos + DATA_HDR_LEN + vlen + plen + (8 if plen == 0 else 0)
        if record_tid != tid or tloc != txn_pos or vlen or record_end > end:
            return False
        if plen and not _pickles_parse(read(plen)):
            return False
        pos = record_end
    return pos == end


def _pickles_parse(record: bytes) -> bool:
    """Whether *record* is the two pickles of a ZODB record (the class, then the state)."""
    stream = BytesIO(record)
    try:
        for _ in range(2):
            for _op in pickletools.genops(stream):
                pass
    except Exception:
        return False
    return stream.tell() == len(record)


def repair_tail(path: str, *, full_scan: bool = False) -> int:
    """Cut *path*'s torn tail past its synced offset (see the module docstring); the bytes cut.

    With *full_scan* (the file did not open) the scan starts at the first
    transaction, and a damaged transaction before the synced offset is left
    alone: that is damage to synced data, which FileStorage then reports.
    Without a synced offset nothing is cut.
    """
    synced = read_synced_offset(path)
    if synced is None or not os.path.exists(path):
        return 0
    size = os.path.getsize(path)
    if synced > size or not _ends_a_transaction(path, synced):
        return 0  # the offset is not this file's (a pack, a restored copy): trust nothing
    damaged = check_tail(path, FILE_HEADER_LEN if full_scan else synced)
    if damaged >= size or damaged < synced:
        return 0
    aside = f"{path}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    with open(path, "r+b") as data:
        data.seek(damaged)
        with open(aside, "wb") as out:
            out.write(data.read())
            out.flush()
            os.fsync(out.fileno())
        data.truncate(damaged)
        data.flush()
        os.fsync(data.fileno())
    log.warning("%s: cut %d bytes of unsynced transactions torn by a crash at offset %d "
                "(nothing acknowledged was there; kept in %s)", path, size - damaged, damaged, aside)
    return size - damaged


def open_repaired(path: str, **options: Any) -> GroupCommitFileStorage:
    """A ``GroupCommitFileStorage`` on *path*, its torn tail cut first (and again if it does not open).

    *options* go to the storage (``fsync``, ``fsync_interval``, FileStorage's own).
    """
    if not options.get("read_only"):
        repair_tail(path)
    try:
        return GroupCommitFileStorage(path, **options)
    except (CorruptedError, CorruptedFileStorageError):
        if options.get("read_only") or not repair_tail(path, full_scan=True):
            raise
        return GroupCommitFileStorage(path, **options)
