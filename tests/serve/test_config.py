"""Tests for zodbsession.config: layering, validation, the shipped file, the helpers."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import transaction

from zodbsession.config import Settings, load_settings
from zodbsession.core.db import SESSIONS_DATABASE
from zodbsession.core.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "conf" / "zodbsession.toml"


@pytest.fixture(autouse=True)
def _no_ambient_config(tmp_path, monkeypatch):
    """Run from an empty directory so no conf/ file or real environment leaks in."""
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults and layering ----------------------------------------------------------


def test_defaults_without_file_or_environment():
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.storage.uri == "file://var/Data.fs"
    assert settings.storage.sessions_uri == ""
    assert settings.storage.pool_size == 8
    assert settings.sessions.idle_timeout == 1800
    assert settings.sessions.max_lifetime == 28800
    assert settings.cookie.secure == "auto"
    assert settings.cookie.samesite == "Lax"
    assert settings.cookie.httponly is True
    assert (settings.publisher.retry_attempts, settings.publisher.retry_deadline) == (0, 10.0)
    assert settings.server.port == 8080
    assert settings.logging.level == "INFO"
    assert settings.source_of("server.port") == "default"
    assert (settings.sessions.max_sessions, settings.sessions.max_session_bytes) == (0, 65536)
    assert (settings.admin.host, settings.admin.port, settings.admin.token) == ("127.0.0.1", 8081, "")
    assert settings.admin.enabled is False


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.server.port = 1  # type: ignore[misc]


def test_file_values_replace_defaults(tmp_path):
    path = write(tmp_path / "z.toml", "[server]\nport = 9000\n[cookie]\nsecure = true\n")
    settings = load_settings(path, environ={})
    assert settings.server.port == 9000
    assert settings.cookie.secure is True
    assert settings.server.threads == 8
    assert settings.source_of("server.port") == str(path)
    assert settings.source_of("server.threads") == "default"


def test_default_path_is_read_from_the_current_directory(tmp_path):
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf" / "zodbsession.toml", "[server]\nport = 9001\n")
    assert load_settings(environ={}).server.port == 9001


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: no such configuration file"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_environment_beats_file(tmp_path):
    path = write(tmp_path / "z.toml", '[server]\nport = 9000\n[storage]\nuri = "file://x.fs"\n')
    env = {"ZODBSESSION_SERVER_PORT": "9100", "ZODBSESSION_STORAGE_URI": "memory://"}
    settings = load_settings(path, environ=env)
    assert settings.server.port == 9100
    assert settings.storage.uri == "memory://"
    assert settings.source_of("server.port") == "environment ZODBSESSION_SERVER_PORT"


def test_overrides_beat_environment():
    settings = load_settings(
        environ={"ZODBSESSION_SERVER_PORT": "9100", "ZODBSESSION_SERVER_THREADS": "3"},
        overrides={"server.port": 9200, "cookie": {"httponly": False}},
    )
    assert settings.server.port == 9200
    assert settings.server.threads == 3
    assert settings.cookie.httponly is False
    assert settings.source_of("server.port") == "override"


def test_environment_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("ZODBSESSION_COOKIE_NAME", "sid")
    settings = load_settings()
    assert settings.cookie.name == "sid"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("Yes", True), ("1", True), ("false", False), ("no", False), ("0", False)],
    ids=["true", "Yes", "1", "false", "no", "0"],
)
def test_environment_parses_booleans(text, expected):
    settings = load_settings(environ={"ZODBSESSION_PUBLISHER_STREAMING": text})
    assert settings.publisher.streaming is expected


def test_environment_parses_numbers_and_auto():
    env = {
        "ZODBSESSION_SESSIONS_IDLE_TIMEOUT": "900.5",
        "ZODBSESSION_JANITOR_BATCH_SIZE": "50",
        "ZODBSESSION_COOKIE_SECURE": "auto",
        "ZODBSESSION_LOGGING_LEVEL": "debug",
    }
    settings = load_settings(environ=env)
    assert settings.sessions.idle_timeout == 900.5
    assert settings.janitor.batch_size == 50
    assert settings.cookie.secure == "auto"
    assert settings.logging.level == "DEBUG"


def test_from_mapping_accepts_nested_and_dotted_keys():
    nested = Settings.from_mapping({"sessions": {"idle_timeout": 60, "access_resolution": 5}})
    dotted = Settings.from_mapping({"sessions.idle_timeout": 60, "sessions.access_resolution": 5})
    assert nested == dotted
    assert nested.sessions.idle_timeout == 60.0
    assert isinstance(nested.sessions.idle_timeout, float)


# -- bad values --------------------------------------------------------------------

BAD_VALUES = [
    ("sessions.idle_timeout", {"sessions.idle_timeout": 0}),
    ("sessions.idle_timeout", {"sessions.idle_timeout": -5}),
    ("sessions.max_lifetime", {"sessions.max_lifetime": 600}),
    ("sessions.access_resolution", {"sessions.access_resolution": 1800}),
    ("sessions.access_resolution", {"sessions.access_resolution": -1}),
    ("server.port", {"server.port": 70000}),
    ("server.port", {"server.port": -1}),
    ("server.threads", {"server.threads": 0}),
    ("server.app", {"server.app": "not a spec"}),
    ("storage.pool_size", {"storage.pool_size": 0}),
    ("storage.uri", {"storage.uri": "var/Data.fs"}),
    ("storage.uri", {"storage.uri": "nosuchscheme://x"}),
    ("storage.uri", {"storage.uri": "memory://?connection_bogus=1"}),
    ("storage.sessions_uri", {"storage.sessions_uri": "bogus://x"}),
    ("storage.sessions_uri", {"storage.sessions_uri": "file://var/Data.fs"}),
    ("cookie.samesite", {"cookie.samesite": "lax-ish"}),
    ("cookie.samesite", {"cookie.samesite": "None"}),
    ("cookie.samesite", {"cookie.samesite": "None", "cookie.secure": "auto"}),
    ("cookie.secure", {"cookie.secure": "sometimes"}),
    ("cookie.name", {"cookie.name": "bad name;"}),
    ("cookie.path", {"cookie.path": "app"}),
    ("publisher.retry_attempts", {"publisher.retry_attempts": -1}),
    ("publisher.retry_backoff", {"publisher.retry_backoff": -0.1}),
    ("publisher.retry_deadline", {"publisher.retry_deadline": -1.0}),
    ("publisher.retry_deadline", {"publisher.retry_deadline": 0.0}),
    ("janitor.interval", {"janitor.interval": -1}),
    ("janitor.batch_size", {"janitor.batch_size": 0}),
    ("logging.level", {"logging.level": "LOUD"}),
    # wrong types: a file or override must say what it means
    ("cookie.httponly", {"cookie.httponly": 1}),
    ("server.port", {"server.port": "8080"}),
    ("server.port", {"server.port": 8080.0}),
    ("server.threads", {"server.threads": True}),
    ("sessions.idle_timeout", {"sessions.idle_timeout": "1800"}),
    ("sessions.idle_timeout", {"sessions.idle_timeout": float("inf")}),
    ("server.host", {"server.host": 127}),
    # scaling out: workers, ZEO
    ("server.workers", {"server.workers": 0}),
    ("server.workers", {"server.workers": 2}),
    ("server.workers", {"server.workers": 2, "storage.uri": "memory://"}),
    ("server.workers", {"server.workers": 2, "storage.uri": "zeo://127.0.0.1:8100",
                        "storage.sessions_uri": "file://var/Sessions.fs"}),
    ("storage.uri", {"storage.uri": "zeo://127.0.0.1:8100?server_sync=2"}),
    ("storage.uri", {"storage.uri": "zeo://127.0.0.1:8100?wait_timeout=0"}),
    ("zeo.address", {"zeo.address": "8100"}),
    ("zeo.address", {"zeo.address": "127.0.0.1:0"}),
    ("zeo.address", {"zeo.address": "127.0.0.1:99999"}),
    ("zeo.address", {"zeo.address": "::1:8100"}),
    ("zeo.storage", {"zeo.storage": " "}),
    ("zeo.sessions_storage", {"zeo.sessions_storage": "var/Data.fs"}),
    # limits and the admin listener
    ("sessions.max_sessions", {"sessions.max_sessions": -1}),
    ("sessions.max_session_bytes", {"sessions.max_session_bytes": -1}),
    ("admin.host", {"admin.host": ""}),
    ("admin.port", {"admin.port": 65536}),
    ("admin.token", {"admin.token": "fifteen-chars.."}),
    ("admin.token", {"admin.token": "   "}),
    ("admin.token", {"admin.token": " a-long-enough-token-with-a-space"}),
    ("admin.token", {"admin.token": "a-long-enough-token\n"}),
    ("admin.token", {"admin.token": "a-long-enough-tökén-not-ascii"}),
    ("admin.token", {"admin.token": 1234567890123456789}),
    ("admin.port", {"admin.token": "x" * 16, "admin.port": 8080}),
    ("admin.port", {"admin.token": "x" * 16, "admin.port": 9000, "server.port": 9000,
                    "server.host": "0.0.0.0"}),
]
BAD_IDS = [
    "idle-zero", "idle-negative", "lifetime-below-idle", "resolution-not-below-idle",
    "resolution-negative", "port-too-big",
    "port-negative", "threads-zero", "app-malformed", "pool-zero",
    "uri-no-scheme", "uri-unknown-scheme", "uri-bad-option", "sessions-uri-unknown-scheme",
    "sessions-uri-same-as-uri", "samesite-unknown", "samesite-none-insecure",
    "samesite-none-auto", "secure-bad", "cookie-name-bad", "cookie-path-relative",
    "retries-negative", "backoff-negative", "deadline-negative", "no-retry-limit-at-all",
    "janitor-interval-negative", "janitor-batch-zero",
    "log-level-unknown",
    "bool-as-int", "int-as-str", "int-as-float", "int-as-bool", "float-as-str",
    "float-infinite", "str-as-int",
    "workers-zero", "workers-on-file", "workers-on-memory", "workers-on-file-sessions",
    "zeo-server-sync-bad", "zeo-wait-zero", "zeo-address-no-host", "zeo-address-port-zero",
    "zeo-address-port-too-big", "zeo-address-ipv6-unbracketed", "zeo-storage-blank",
    "zeo-sessions-storage-same",
    "max-sessions-negative", "max-session-bytes-negative", "admin-host-empty",
    "admin-port-too-big", "admin-token-too-short", "admin-token-blank", "admin-token-padded",
    "admin-token-control-character", "admin-token-not-ascii", "admin-token-not-a-string",
    "admin-port-is-server-port", "admin-port-is-server-port-on-all-interfaces",
]  # fmt: skip


@pytest.mark.parametrize(("key", "overrides"), BAD_VALUES, ids=BAD_IDS)
def test_bad_value_is_rejected_naming_the_key(key, overrides):
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides=overrides)
    message = str(info.value)
    assert message.startswith(f"{key}: ")
    assert info.value.key == key
    assert "\n" not in message
    assert re.search(r"\(got .+\)$", message), message


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("ZODBSESSION_SERVER_PORT", "eighty"),
        ("ZODBSESSION_SERVER_PORT", "80.5"),
        ("ZODBSESSION_PUBLISHER_STREAMING", "maybe"),
        ("ZODBSESSION_SESSIONS_IDLE_TIMEOUT", "nan"),
        ("ZODBSESSION_COOKIE_SECURE", "2"),
    ],
    ids=["int-garbage", "int-fraction", "bool-garbage", "float-nan", "secure-garbage"],
)
def test_garbage_in_environment_names_key_and_variable(variable, text):
    key = ".".join(variable.removeprefix("ZODBSESSION_").lower().split("_", 1))
    with pytest.raises(ConfigError) as info:
        load_settings(environ={variable: text})
    assert str(info.value).startswith(f"{key}: ")
    assert f"(got {text!r} from environment {variable})" in str(info.value)


def test_range_error_reports_where_the_value_came_from(tmp_path):
    path = write(tmp_path / "z.toml", "[server]\nthreads = 0\n")
    with pytest.raises(
        ConfigError, match=rf"^server.threads: .* \(got 0 from {re.escape(str(path))}\)$"
    ):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"server": {"prot": 1}}, "server.prot: unknown setting; did you mean 'server.port'?"),
        ({"server": {"pool_size": 1}},
         "server.pool_size: unknown setting; did you mean 'storage.pool_size'?"),
        ({"sever": {"port": 1}}, "sever: unknown section; did you mean 'server'?"),
        ({"port": 1}, "port: unknown section; did you mean 'server.port'?"),
        ({"server": 1}, "server: must be a table of settings ([server])"),
        ({"zzz": {}}, "zzz: unknown section (got {} from mapping)"),
    ],
    ids=["key-typo", "key-in-wrong-section", "section-typo", "key-without-section",
         "section-not-table", "no-suggestion"],
)  # fmt: skip
def test_unknown_names_are_rejected_with_a_suggestion(source, message):
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping(source)
    assert str(info.value).startswith(message)


def test_unknown_environment_variable_is_rejected_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"^server.prot: unknown setting; did you mean 'server.port'\?"
    ):
        load_settings(environ={"ZODBSESSION_SERVER_PROT": "9000", "OTHER_THING": "x"})


def test_malformed_toml_names_the_file_and_position(tmp_path):
    path = write(tmp_path / "broken.toml", "[server]\nport = 80\nhost = \n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: not valid TOML")
    assert "line 3" in message
    assert "\n" not in message


# -- the shipped file ------------------------------------------------------------------


def test_shipped_file_equals_the_defaults_and_sets_every_key():
    settings = load_settings(SHIPPED, environ={})
    assert settings == Settings()
    assert settings.as_dict() == Settings().as_dict()
    with SHIPPED.open("rb") as f:
        document = tomllib.load(f)
    assert {s: set(keys) for s, keys in document.items()} == {
        s: set(keys) for s, keys in Settings().as_dict().items()
    }
    assert all(
        settings.source_of(f"{s}.{k}") == str(SHIPPED) for s, keys in document.items() for k in keys
    )


def test_shipped_file_has_a_comment_before_every_key():
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"^\w+\s*=", line)]
    assert len(keys) == sum(len(v) for v in Settings().as_dict().values())
    uncommented = [lines[i] for i in keys if not lines[i - 1].startswith("#")]
    assert uncommented == []


# -- helpers -----------------------------------------------------------------------------


def test_session_manager_uses_the_sessions_section():
    settings = Settings.from_mapping(
        {"sessions": {"idle_timeout": 100, "max_lifetime": 500, "access_resolution": 7}}
    )
    manager = settings.session_manager(clock=lambda: 42.0)
    assert (manager.idle_timeout, manager.max_lifetime, manager.access_resolution) == (100, 500, 7)
    assert (manager.max_sessions, manager.max_session_bytes) == (0, 65536)
    assert manager.database is None
    assert manager.clock() == 42.0
    limited = Settings.from_mapping({"sessions": {"max_sessions": 10, "max_session_bytes": 0}})
    assert (limited.session_manager().max_sessions, limited.session_manager().max_session_bytes) == (10, 0)


def test_session_manager_targets_the_sessions_database_when_separate():
    settings = Settings.from_mapping(
        {"storage": {"uri": "memory://", "sessions_uri": "memory://s"}}
    )
    assert settings.session_manager().database == SESSIONS_DATABASE


def test_open_db_opens_the_configured_storage_and_pool_size():
    settings = Settings.from_mapping({"storage": {"uri": "memory://", "pool_size": 3}})
    db = settings.open_db()
    try:
        assert db.getPoolSize() == 3
        with db.transaction() as conn:
            conn.root()["x"] = 1
        with db.transaction() as conn:
            assert conn.root()["x"] == 1
    finally:
        db.close()


def test_open_db_with_sessions_uri_joins_a_multi_database():
    settings = Settings.from_mapping(
        {"storage": {"uri": "memory://", "sessions_uri": "memory://s"}}
    )
    db = settings.open_db()
    try:
        assert set(db.databases) == {"main", SESSIONS_DATABASE}
        conn = db.open()
        try:
            manager = settings.session_manager()
            session = manager.new(conn)
            session["n"] = 1
            transaction.commit()
            assert session._p_jar.db() is db.databases[SESSIONS_DATABASE]
        finally:
            transaction.abort()
            conn.close()
    finally:
        for database in db.databases.values():
            database.close()


# -- scaling out: workers and the ZEO server ---------------------------------------------


def test_zeo_section_defaults():
    settings = load_settings(environ={})
    assert settings.zeo.address == "var/zeo.sock"  # a private Unix socket, not a TCP port
    assert settings.zeo.storage == "var/Data.fs"
    assert settings.zeo.sessions_storage == ""
    assert settings.server.workers == 1


def test_a_zeo_uri_without_an_address_means_the_zeo_section_address(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"ZODBSESSION_STORAGE_URI": "zeo://?wait_timeout=5"})
    assert settings.storage.uri == f"zeo://{tmp_path}/var/zeo.sock?wait_timeout=5"
    settings = load_settings(environ={"ZODBSESSION_STORAGE_URI": "zeo://",
                                      "ZODBSESSION_ZEO_ADDRESS": "10.0.0.5:8100"})
    assert settings.storage.uri == "zeo://10.0.0.5:8100"
    settings = load_settings(environ={"ZODBSESSION_STORAGE_URI": "zeo://127.0.0.1:9000"})
    assert settings.storage.uri == "zeo://127.0.0.1:9000"


_NEEDS_RELSTORAGE = pytest.mark.skipif(importlib.util.find_spec("relstorage") is None,
                                       reason="RelStorage is not installed")


@pytest.mark.parametrize(
    "uri",
    ["zeo://127.0.0.1:8100", "zeo:///run/zeo.sock?wait_timeout=5",
     pytest.param("sqlite://?data_dir=var/rs", marks=_NEEDS_RELSTORAGE),
     pytest.param("postgres://user:pw@db.example:5432/sessions?keep_history=false",
                  marks=_NEEDS_RELSTORAGE)],
    ids=["zeo-tcp", "zeo-unix", "relstorage-sqlite", "relstorage-postgres"],
)
def test_several_workers_are_accepted_on_a_shared_storage(uri):
    settings = load_settings(environ={}, overrides={"server.workers": 4, "storage.uri": uri})
    assert settings.server.workers == 4


def test_workers_on_a_file_storage_explain_why_in_one_line():
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"ZODBSESSION_SERVER_WORKERS": "3"})
    message = str(info.value)
    assert message.startswith("server.workers: 3 processes cannot share file://var/Data.fs: ")
    assert "one process only" in message and "zeo://" in message and "RelStorage" in message
    assert message.endswith("(got 3 from environment ZODBSESSION_SERVER_WORKERS)")


def test_command_line_overrides_are_named_as_such():
    with pytest.raises(ConfigError, match=r"\(got 0 from --workers\)$"):
        load_settings(environ={}, overrides={"server.workers": 0}, overrides_source="--workers")


@pytest.mark.parametrize(
    "address", ["127.0.0.1:8100", "localhost:9", "[::1]:8100", "./var/zeo.sock", "/run/zeo.sock"],
    ids=["ipv4", "hostname", "ipv6", "relative-socket", "absolute-socket"],
)
def test_zeo_address_accepts_host_port_and_socket_paths(address):
    assert load_settings(environ={}, overrides={"zeo.address": address}).zeo.address == address


# -- the admin listener ------------------------------------------------------------------------

SECRET = "s3cret-admin-token-never-printed"


def test_an_admin_token_turns_the_listener_on_from_the_environment():
    settings = load_settings(environ={"ZODBSESSION_ADMIN_TOKEN": SECRET, "ZODBSESSION_ADMIN_PORT": "9999"})
    assert settings.admin.enabled is True
    assert (settings.admin.token, settings.admin.port) == (SECRET, 9999)
    assert settings.source_of("admin.token") == "environment ZODBSESSION_ADMIN_TOKEN"


def test_the_admin_token_stays_out_of_reprs():
    settings = Settings.from_mapping({"admin": {"token": SECRET}})
    assert SECRET not in repr(settings) and SECRET not in repr(settings.admin)
    assert "token=<set>" in repr(settings.admin)
    assert "token=''" in repr(Settings().admin)


@pytest.mark.parametrize(
    "source",
    [{"admin": {"token": SECRET[:10]}}, {"admin": {"tokn": SECRET}}, {"admin": {"token": SECRET + "\t"}},
     {"admn": {"token": SECRET}}, {"admin.admin_token": SECRET}],
    ids=["too-short", "misspelt-key", "control-character", "misspelt-section", "unknown-token-key"],
)
def test_the_admin_token_stays_out_of_error_messages(source):
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping(source)
    assert SECRET[:10] not in str(info.value)
    assert "***" in str(info.value)


def test_a_short_token_error_says_how_long_and_how_to_make_one():
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"ZODBSESSION_ADMIN_TOKEN": "abc"})
    message = str(info.value)
    assert message.startswith("admin.token: is 3 characters long; use at least 16")
    assert "secrets.token_urlsafe" in message
    assert message.endswith("(got '***' from environment ZODBSESSION_ADMIN_TOKEN)")


@pytest.mark.parametrize(
    "overrides",
    [{"admin.port": 8080}, {"admin.port": 8080, "admin.token": "x" * 16, "admin.host": "127.0.0.2"},
     {"admin.port": 0, "server.port": 0, "admin.token": "x" * 16}],
    ids=["listener-off", "other-host", "both-any-free-port"],
)
def test_the_admin_port_may_equal_the_servers_where_they_cannot_collide(overrides):
    settings = load_settings(environ={}, overrides=overrides)
    assert settings.admin.port == overrides["admin.port"]
