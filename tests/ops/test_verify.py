"""Tests for ``zodbsession.ops.verify``: sound and damaged files, corrupt containers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from opskit import corrupt, populate
from ZODB import DB
from ZODB.FileStorage import FileIterator

from zodbsession.core.db import open_db
from zodbsession.core.manager import SessionManager
from zodbsession.core.session import new_session_id
from zodbsession.ops.verify import verify

# The db, manager and clock fixtures are conftest's; populate() and corrupt()
# are test_maintenance's, so both files fill a database the same way.


def test_verify_says_a_good_database_is_sound(db, manager):
    populate(db, manager, 20, users=("ann", "bob", None))
    report = verify(db)
    assert report.sound, report.problems
    assert report.problems == ()
    outcomes = {check.name: check.outcome for check in report.checks}
    assert outcomes == {
        "fstest": "passed",
        "references": "passed",
        "btrees": "passed",
        "consistency": "passed",
    }
    assert json.loads(json.dumps(report.as_dict()))["sound"] is True


def test_verify_reports_file_checks_as_skipped_on_other_storages(manager):
    db = DB(None)
    try:
        populate(db, manager, 3)
        report = verify(db)
    finally:
        db.close()
    assert report.sound
    assert {check.name for check in report.skipped} == {"fstest", "references"}
    assert all("not a FileStorage" in check.detail for check in report.skipped)


def damaged_copy(tmp_path: Path, source: Path, damage: str) -> Path:
    """A copy of a closed Data.fs (and its index) damaged in its middle transaction."""
    copy = tmp_path / "copy" / "Data.fs"
    copy.parent.mkdir()
    shutil.copy(source, copy)
    shutil.copy(f"{source}.index", f"{copy}.index")
    records = list(FileIterator(str(copy)))
    middle = records[len(records) // 2]
    with open(copy, "r+b") as f:
        if damage == "truncate":
            f.truncate(middle._pos + 30)
            return copy
        offset = {
            "flip-transaction-header": middle._tpos,  # its transaction id
            "flip-record-header": middle._pos,  # its first data record's oid
            "flip-pickle": middle._pos + 60,  # inside a pickle: no header check looks
        }[damage]
        f.seek(offset)
        chunk = f.read(8)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in chunk))
    return copy


@pytest.mark.parametrize(
    "damage", ["truncate", "flip-transaction-header", "flip-record-header", "flip-pickle"]
)
def test_verify_says_a_damaged_file_is_not_sound(tmp_path, manager, damage):
    source = tmp_path / "Data.fs"
    db = open_db(f"file://{source}")
    for _ in range(20):
        populate(db, manager, 2, users=("ann",))
    db.close()
    copy = damaged_copy(tmp_path, source, damage)

    db = open_db(f"file://{copy}?read_only=1")  # read-only: nothing is repaired on open
    try:
        report = verify(db)
    finally:
        db.close()
    assert not report.sound
    assert report.problems


def test_verify_notes_data_a_writable_open_cut_off(tmp_path, manager):
    source = tmp_path / "Data.fs"
    db = open_db(f"file://{source}")
    for _ in range(10):
        populate(db, manager, 2)
    db.close()
    copy = damaged_copy(tmp_path, source, "truncate")
    db = open_db(f"file://{copy}")  # FileStorage cuts the damaged tail off here
    try:
        report = verify(db)
    finally:
        db.close()
    assert any("/truncated/" in note for note in report.notes), report.notes


def _count_off(container):
    container.count.change(5)


def _foreign_user_entry(container):
    session_id = next(iter(container.by_user["ann"]))
    container.by_user["bob"].add(session_id)


def _dangling_user_entry(container):
    container.by_user["ann"].add(new_session_id())


def _lost_expiry_entry(container):
    container.expiry.remove(next(iter(container.expiry)))


@pytest.mark.parametrize(
    "damage",
    [_count_off, _foreign_user_entry, _dangling_user_entry, _lost_expiry_entry],
    ids=["count-disagrees", "user-index-names-anothers-session", "user-index-dangles", "no-expiry"],
)
def test_verify_says_a_corrupt_container_is_not_sound(db, manager, damage):
    populate(db, manager, 10, users=("ann", "bob"))
    corrupt(db, manager, damage)
    report = verify(db)
    assert not report.sound
    failed = {check.name for check in report.checks if check.outcome == "failed"}
    assert failed == {"consistency"}


def test_verify_finds_a_container_in_a_multi_database(tmp_path, clock):
    manager = SessionManager(database="sessions", clock=clock)
    db = open_db(f"file://{tmp_path}/main.fs", sessions_uri=f"file://{tmp_path}/sessions.fs")
    try:
        populate(db, manager, 5, users=("ann",))
        corrupt(db, manager, _count_off)
        report = verify(db)
    finally:
        db.close()
    by_database = {(check.database, check.name): check.outcome for check in report.checks}
    assert by_database[("main", "consistency")] == "skipped"
    assert by_database[("sessions", "consistency")] == "failed"
    assert by_database[("sessions", "fstest")] == "passed"
