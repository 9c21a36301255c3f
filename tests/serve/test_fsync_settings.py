"""``storage.fsync`` and ``storage.fsync_interval``: from the environment, checked, on both databases."""

from __future__ import annotations

import pytest

from zodbsession.config import load_settings
from zodbsession.core.db import SESSIONS_DATABASE
from zodbsession.core.errors import ConfigError
from zodbsession.core.groupcommit import GroupCommitFileStorage


def test_the_default_is_durable():
    settings = load_settings(environ={})
    assert (settings.storage.fsync, settings.storage.fsync_interval) == ("always", 1.0)


def test_interval_mode_from_the_environment_applies_to_the_sessions_database_too(tmp_path):
    settings = load_settings(environ={
        "ZODBSESSION_STORAGE_FSYNC": "interval", "ZODBSESSION_STORAGE_FSYNC_INTERVAL": "0.5",
        "ZODBSESSION_STORAGE_URI": f"file://{tmp_path}/Data.fs",
        "ZODBSESSION_STORAGE_SESSIONS_URI": f"file://{tmp_path}/Sessions.fs"})
    db = settings.open_db()
    try:
        for storage in (db.storage, db.databases[SESSIONS_DATABASE].storage):
            assert isinstance(storage, GroupCommitFileStorage)
            assert (storage.fsync_policy, storage.fsync_interval) == ("interval", 0.5)
    finally:
        for database in list(db.databases.values()):
            database.close()


@pytest.mark.parametrize(("name", "value", "message"), [
    ("ZODBSESSION_STORAGE_FSYNC", "sometimes", "storage.fsync"),
    ("ZODBSESSION_STORAGE_FSYNC_INTERVAL", "0", "storage.fsync_interval"),
])
def test_a_bad_value_is_one_line_naming_the_key(name, value, message):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={name: value})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_zeo_server_serves_group_commit_storages_with_the_storage_policy(tmp_path):
    from zodbsession.serve.zeo import _open_storages

    settings = load_settings(environ={
        "ZODBSESSION_STORAGE_FSYNC": "interval", "ZODBSESSION_ZEO_STORAGE": f"{tmp_path}/Data.fs",
        "ZODBSESSION_ZEO_SESSIONS_STORAGE": f"{tmp_path}/Sessions.fs"})
    storages = _open_storages(settings)
    try:
        assert sorted(storages) == ["1", "sessions"]
        for storage in storages.values():
            assert isinstance(storage, GroupCommitFileStorage)
            assert storage.fsync_policy == "interval"
    finally:
        for storage in storages.values():
            storage.close()
