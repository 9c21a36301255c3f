"""``python -m bench.http_serve FACTORY PORT [stock]``: one ``bench.http_apps`` contender on waitress.

Logging is set up as ``zodbsession serve`` sets it up (INFO to stderr, the
``waitress.queue`` line per queued request quiet), and waitress gets the same
8 threads and the same channels (``zodbsession.serve.waitress_server``), so the
peers and zodbsession differ only in their session layer. ``stock`` serves
on waitress's own channels instead, to show what those cost.
"""

from __future__ import annotations

import logging
import sys

import waitress

from bench import http_apps
from zodbsession.serve.waitress_server import create_server

THREADS = 8


def main(argv: list[str]) -> None:
    factory, port, *variant = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    app = getattr(http_apps, factory)()
    make = waitress.create_server if variant == ["stock"] else create_server
    make(app, host="127.0.0.1", port=int(port), threads=THREADS, ident="bench").run()


if __name__ == "__main__":
    main(sys.argv[1:])
