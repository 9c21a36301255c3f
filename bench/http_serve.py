"""``python -m bench.http_serve FACTORY PORT``: one ``bench.http_apps`` contender on waitress.

Logging is set up as ``zodbsession serve`` sets it up (INFO to stderr), and
waitress gets the same 8 threads, so the peers and zodbsession differ only in
their session layer.
"""

from __future__ import annotations

import logging
import sys

import waitress

from bench import http_apps

THREADS = 8


def main(argv: list[str]) -> None:
    factory, port = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = getattr(http_apps, factory)()
    waitress.serve(app, host="127.0.0.1", port=int(port), threads=THREADS, ident="bench")


if __name__ == "__main__":
    main(sys.argv[1:])
