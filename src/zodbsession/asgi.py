"""``zodbsession.asgi``, where applications import the ASGI front door from.

The door itself lives with the WSGI one in ``zodbsession.web.asgi``; this
module is its public address, as ``zodbsession.flask`` is Flask's.
"""

from zodbsession.web.asgi import SessionMiddleware, run_in_connection

__all__ = ["SessionMiddleware", "run_in_connection"]
