"""A torn FileStorage tail cut off on opening: one clear line, the copy kept in ``truncated/``, pruned."""

from __future__ import annotations

import logging

import pytest

from zodbsession.core import truncation
from zodbsession.core.db import open_db
from zodbsession.core.manager import SessionManager
from zodbsession.ops.verify import verify


def commit_one(path) -> None:
    db = open_db(f"file://{path}")
    try:
        with db.transaction() as conn:
            session = SessionManager().new(conn)
            session["x"] = 1
    finally:
        db.close()


def tear(path, keep_last: int = 30) -> int:
    """Cut the file inside its last transaction, as a crash while committing leaves it; bytes of it left."""
    data = path.read_bytes()
    from ZODB.FileStorage import FileIterator
    last = list(FileIterator(str(path)))[-1]
    torn = last._tpos + keep_last
    path.write_bytes(data[:torn])
    (path.parent / (path.name + ".index")).unlink(missing_ok=True)
    return keep_last


@pytest.fixture
def data_fs(tmp_path):
    path = tmp_path / "var" / "Data.fs"
    commit_one(path)
    return path


def test_a_torn_tail_is_one_line_and_its_copy_is_in_truncated(data_fs, caplog):
    commit_one(data_fs)
    size = tear(data_fs)
    with caplog.at_level(logging.WARNING):
        open_db(f"file://{data_fs}").close()
    lines = [r.getMessage() for r in caplog.records if "truncat" in r.getMessage().lower()
             or "dropped" in r.getMessage()]
    assert len(lines) == 1, lines
    (copy,) = truncation.copies(str(data_fs))
    assert copy.startswith(str(data_fs.parent / "truncated") + "/")
    assert f"dropped {size} bytes" in lines[0] and copy in lines[0]
    assert list(data_fs.parent.glob("Data.fs.tr*")) == []


def test_copies_are_pruned_to_the_newest_few(data_fs, monkeypatch):
    monkeypatch.setattr(truncation, "KEEP", 3)
    for _ in range(5):
        commit_one(data_fs)
        tear(data_fs)
        open_db(f"file://{data_fs}").close()
    assert len(truncation.copies(str(data_fs))) == 3


def test_an_older_stray_copy_is_moved_into_truncated(data_fs):
    (data_fs.parent / "Data.fs.tr0").write_bytes(b"x" * 17)
    open_db(f"file://{data_fs}").close()
    (copy,) = truncation.copies(str(data_fs))
    assert "/truncated/" in copy and not (data_fs.parent / "Data.fs.tr0").exists()


def test_verify_reports_the_kept_copies(data_fs):
    commit_one(data_fs)
    tear(data_fs)
    open_db(f"file://{data_fs}").close()
    db = open_db(f"file://{data_fs}?read_only=1")
    try:
        report = verify(db)
    finally:
        db.close()
    assert report.sound
    (copy,) = truncation.copies(str(data_fs))
    assert any(copy in note and "30 bytes" in note for note in report.notes), report.notes
