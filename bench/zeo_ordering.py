"""Does a begin on one ZEO client see a commit another client just had acknowledged?

``python -m bench.zeo_ordering --pairs 1000`` starts a ZEO server (a child
process, FileStorage in a temporary directory), opens two clients A and B as
``open_db`` does, and for each pair commits a key on A, then at once begins
a transaction on B (bare ZODB: no ``freshness.catch_up``) and reads the key.
It prints how many pairs B read the old value, and how many times B's
``lastTransaction`` was still behind A's commit after its begin.
``--no-server-sync`` opens B with ``server_sync=0``, to show what the
begin's round trip orders. docs/operating.md ("Read-your-writes across app
servers") gives the figures.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time

import transaction

from zodbsession.core.db import open_db

SERVER = """
import sys
from ZEO.StorageServer import StorageServer
from ZODB.FileStorage import FileStorage
StorageServer(("127.0.0.1", int(sys.argv[1])), {"1": FileStorage(sys.argv[2])}).loop()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the ZEO server did not listen on {port} within {timeout} s")


def run(pairs: int, server_sync: bool) -> tuple[int, int]:
    """(pairs where B read the old value, pairs where B's last tid was behind A's commit)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), f"{directory}/Data.fs"])
        try:
            wait_listening(port)
            uri = f"zeo://127.0.0.1:{port}?wait_timeout=10"
            a, b = open_db(uri), open_db(uri + ("" if server_sync else "&server_sync=0"))
            a_tm = transaction.TransactionManager(explicit=True)
            b_tm = transaction.TransactionManager(explicit=True)
            a_conn, b_conn = a.open(a_tm), b.open(b_tm)
            stale = behind = 0
            for n in range(pairs):
                with a_tm:
                    a_conn.root()[f"key{n % 50}"] = n
                acknowledged = a.storage.lastTransaction()
                b_tm.begin()
                stale += b_conn.root().get(f"key{n % 50}") != n
                behind += b.storage.lastTransaction() < acknowledged
                b_tm.abort()
            a_conn.close()
            b_conn.close()
            a.close()
            b.close()
            return stale, behind
        finally:
            server.kill()
            server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--no-server-sync", action="store_true", help="open B with server_sync=0")
    args = parser.parse_args()
    stale, behind = run(args.pairs, not args.no_server_sync)
    print(f"server_sync={0 if args.no_server_sync else 1} pairs={args.pairs} "
          f"stale_reads_on_b={stale} b_behind_after_begin={behind}")


if __name__ == "__main__":
    main()
