"""A WSGI application on a real waitress in a thread of the test process, on a free loopback port.

For the tests that need real sockets and real server threads around the
publisher (threads, the per-session queue) but no child process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from waitress.server import create_server

#: Seconds the server's shutdown and its thread's join may take at most (a bound against hangs).
SHUTDOWN_WAIT = 30


@contextmanager
def serving(app: Callable, threads: int = 8) -> Iterator[int]:
    """Serve *app* with waitress on 127.0.0.1 and an ephemeral port, *threads* threads; yields the port."""
    server = create_server(app, host="127.0.0.1", port=0, threads=threads)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    try:
        yield server.effective_port
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=SHUTDOWN_WAIT)
        thread.join(timeout=SHUTDOWN_WAIT)
