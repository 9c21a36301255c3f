"""Private by default: what zodbsession creates, other local users can neither read nor reach.

Real processes: a fresh ``serve`` and ``zodbsession zeo`` with the shipped
configuration, then another local user (the tests run as root and drop to
``nobody`` in a child process) trying the database files, the ZEO socket and
the control socket. The directory the test works in is made traversable by
everyone, so that only the modes zodbsession chose stand in the way.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from serverproc import ServerProcess, ZeoProcess, run_cli, wait_for
from ZODB.FileStorage import FileStorage

REPO = Path(__file__).resolve().parents[2]
#: An interpreter ``nobody`` may run (the tests' own is under root's directories): the probe is stdlib.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def open_dir():
    """A directory every user may traverse (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="zodbsession-private-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


#: What the other user tries, each attempt printed as "name: ok" or "name: ErrorName".
PROBE = r'''
import os, socket, sys
for path in sys.argv[1:]:
    try:
        if path.endswith((".sock", ".control")):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(path)
        else:
            open(path, "rb").close()
        print(path, "ok")
    except OSError as exc:
        print(path, type(exc).__name__)
'''


def as_nobody(*paths: Path) -> dict[str, str]:
    """Try to open or connect to each path as ``nobody``; {path: "ok" or the error's name}."""
    nobody = pwd.getpwnam("nobody")

    def drop() -> None:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    result = subprocess.run([SYSTEM_PYTHON, "-c", PROBE, *map(str, paths)], preexec_fn=drop,
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    return dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())


def test_a_fresh_serve_makes_var_0700_and_its_files_0600(open_dir):
    env = {"ZODBSESSION_STORAGE_URI": "file://var/Data.fs"}
    with ServerProcess(open_dir, env) as server:
        var = open_dir / "var"
        wait_for(lambda: (var / "Data.fs.control").exists(), 30, "the control socket")
        assert mode(var) == 0o700
        made = sorted(p.name for p in var.iterdir())
        assert {"Data.fs", "Data.fs.lock", "Data.fs.control"} <= set(made)
        for path in var.iterdir():
            assert mode(path) & 0o077 == 0, f"{path.name} is {mode(path):o}"
        tried = as_nobody(var / "Data.fs", var / "Data.fs.control", var / "Data.fs.index")
        assert "ok" not in tried.values(), tried
        assert server.process.poll() is None


def test_zeo_with_the_shipped_config_listens_on_a_private_socket_and_no_tcp_port(open_dir):
    shutil.copytree(REPO / "conf", open_dir / "conf")
    zeo = ZeoProcess(open_dir, {}, unix_socket=str(open_dir / "var" / "zeo.sock"))
    zeo.port_env = lambda: {}  # the shipped config alone says where to listen
    with zeo:
        sock = open_dir / "var" / "zeo.sock"
        assert stat.S_ISSOCK(sock.lstat().st_mode) and mode(sock) & 0o077 == 0
        assert mode(open_dir / "var") == 0o700
        assert listening_tcp_ports(zeo.process.pid) == []
        # the app servers' zeo:// (no address) reaches it from the same configuration
        result = run_cli("stats", env={"ZODBSESSION_STORAGE_URI": "zeo://?wait_timeout=5"}, cwd=open_dir)
        assert result.returncode == 0, result.stderr
        assert f"ZEO.ClientStorage.ClientStorage {sock}" in result.stdout
        tried = as_nobody(sock, open_dir / "var" / "Data.fs")
        assert "ok" not in tried.values(), tried


def test_an_existing_shared_file_is_left_alone_with_one_warning(open_dir):
    (open_dir / "var").mkdir(mode=0o755)
    (open_dir / "var").chmod(0o755)
    data = open_dir / "var" / "Data.fs"
    FileStorage(str(data)).close()  # an existing database (maintenance commands never create one)
    data.chmod(0o644)
    result = run_cli("stats", env={"ZODBSESSION_STORAGE_URI": "file://var/Data.fs"}, cwd=open_dir)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"{data} is readable by other users") == 1
    assert mode(data) == 0o644 and mode(open_dir / "var") == 0o755


def listening_tcp_ports(pid: int) -> list[int]:
    """The TCP ports process *pid* listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed since it was listed
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_the_tcp_port_probe_sees_a_tcp_zeo_server(tmp_path):
    """The probe above can fail: a ZEO server on TCP is seen listening."""
    with ZeoProcess(tmp_path, {"ZODBSESSION_ZEO_STORAGE": str(tmp_path / "Data.fs")}) as zeo:
        assert listening_tcp_ports(zeo.process.pid) == [zeo.port]
        assert "any process that can connect can store pickles" in zeo.log()
