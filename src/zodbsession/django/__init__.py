"""zodbsession for Django: ``SESSION_ENGINE = "zodbsession.django"``.

The session backend (``SessionStore``) keeps Django sessions in
zodbsession's session container; under a ``SessionPublisher`` they commit
with the request's transaction. ``use_database``/``on_start`` give it a
database opened elsewhere; ``middleware.PublishErrorMiddleware`` turns
``Redirect``/``PublishError`` raised in views into responses. See
docs/django.md.
"""

from zodbsession.django.backend import SessionStore
from zodbsession.django.database import close_database, on_start, use_database

__all__ = ["SessionStore", "close_database", "on_start", "use_database"]
