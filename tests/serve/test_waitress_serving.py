"""Waitress channels that wait for their task instead of polling for it.

A real waitress server on loopback runs an application that sends its
headers and a first chunk, then blocks until the test releases it. While it
blocks, the channel has output buffered and a task running: stock waitress
calls that writable and its event loop spins on ``handle_write``; a
``WaitingChannel`` is not writable, so the loop sleeps, and the whole answer
still arrives once the task ends. Every wait has a timeout, so a hang fails
the test instead of stalling it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from waitress.channel import HTTPChannel

from zodbsession.serve.waitress_server import WaitingChannel, create_server

TIMEOUT = 15  # seconds, for every wait


class HeldApp:
    """A WSGI app that sends ``first `` of an 11-byte body, then waits for ``release``.

    The test writes the rest (``last\\n``) into the channel as the task would.
    """

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
        yield b"first "
        self.started.set()
        self.release.wait(TIMEOUT)


@contextmanager
def serving(app: Any, **options: Any) -> Iterator[Any]:
    """*app* on a ``create_server`` server on 127.0.0.1, run by a thread; yields the server."""
    server = create_server(app, host="127.0.0.1", port=0, threads=2, **options)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=TIMEOUT)
        thread.join(timeout=TIMEOUT)


def channel_of(server: Any) -> Any:
    """The one connection's channel in *server*'s socket map, once it is there."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        channels = [item for item in list(server._map.values()) if isinstance(item, HTTPChannel)]
        if channels:
            return channels[0]
        time.sleep(0.01)
    raise AssertionError("no channel appeared")


def writable_elsewhere(channel: Any) -> bool:
    """``channel.writable()`` asked by another thread, as the event loop asks it.

    The output lock is re-entrant: asked by the thread that holds it, it would
    always be free.
    """
    answers = []
    asking = threading.Thread(target=lambda: answers.append(channel.writable()))
    asking.start()
    asking.join(TIMEOUT)
    return bool(answers[0])


def read_response(client: socket.socket) -> bytes:
    """Everything up to the end of an 11-byte body."""
    received = b""
    while not received.endswith(b"first last\n"):
        chunk = client.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def test_a_channel_whose_task_holds_the_output_lock_is_not_writable() -> None:
    app = HeldApp()
    with serving(app) as server, socket.create_connection(
            ("127.0.0.1", server.effective_port), timeout=TIMEOUT) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert app.started.wait(TIMEOUT)
        channel = channel_of(server)
        assert isinstance(channel, WaitingChannel)
        assert channel.requests  # the task is still running
        with channel.outbuf_lock:  # as write_soon holds it, between appending and sending
            channel.outbufs[-1].append(b"last\n")
            channel.total_outbufs_len += 5
            # What this module exists for: stock waitress would poll this channel now.
            assert HTTPChannel.writable(channel)
            assert not writable_elsewhere(channel)
        assert writable_elsewhere(channel)  # the lock is free: the loop may flush
        server.pull_trigger()  # as write_soon does when output is left over
        assert read_response(client).endswith(b"first last\n")
        app.release.set()


def test_the_event_loop_sleeps_while_a_task_holds_the_output_lock() -> None:
    """Stock waitress calls handle_write thousands of times in this pause; this, never."""
    app = HeldApp()
    calls = []
    original = HTTPChannel.handle_write
    with serving(app) as server, socket.create_connection(
            ("127.0.0.1", server.effective_port), timeout=TIMEOUT) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert app.started.wait(TIMEOUT)
        channel = channel_of(server)
        HTTPChannel.handle_write = lambda self: (calls.append(1), original(self))[1]
        try:
            with channel.outbuf_lock:
                channel.outbufs[-1].append(b"last\n")
                channel.total_outbufs_len += 5
                server.pull_trigger()  # the loop wakes and looks at the channel
                time.sleep(0.2)
                held = len(calls)
            server.pull_trigger()
            assert read_response(client).endswith(b"first last\n")
        finally:
            HTTPChannel.handle_write = original
        app.release.set()
    assert held == 0
    assert calls, "the loop never flushed the rest"


def test_a_large_answer_streams_while_its_task_still_runs() -> None:
    """8 MiB, more than the socket takes at once: what write_soon leaves over reaches the client."""
    chunk = b"x" * (8 << 20)
    more = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield chunk
        more.wait(TIMEOUT)
        yield b"end"

    with serving(app) as server, socket.create_connection(
            ("127.0.0.1", server.effective_port), timeout=TIMEOUT) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while received.count(b"x") < len(chunk):  # all of the first chunk, the task still held
            data = client.recv(1 << 20)
            assert data, "the connection closed early"
            received += data
        more.set()
        while data:
            data = client.recv(1 << 20)
            received += data
    assert received.endswith(b"3\r\nend\r\n0\r\n\r\n")  # chunked: the last chunk, then the end


def test_several_sockets_all_get_waiting_channels() -> None:
    sockets = []
    for _ in range(2):
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(("127.0.0.1", 0))
        sockets.append(listening)
    server = create_server(HeldApp(), sockets=sockets, threads=1)
    try:
        listeners = [item for item in server.map.values() if hasattr(item, "channel_class")]
        assert len(listeners) == 2
        assert all(listener.channel_class is WaitingChannel for listener in listeners)
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=TIMEOUT)
