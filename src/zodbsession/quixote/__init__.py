"""``zodbsession.quixote``: Quixote 3.8 applications with ZODB sessions, one transaction per request.

``make_app(root_directory, db)`` is the WSGI application, safe under a
threaded server; ``ZODBSessionManager`` is the Quixote session manager whose
sessions are zodbsession sessions (``QuixoteSession`` in a view, by
``quixote.get_session()``); ``connection()`` and ``root()`` reach the
request's ZODB data, committed or aborted with the session. The guide is
``docs/quixote.md``; ``pip install 'zodbsession[quixote]'``.
"""

from __future__ import annotations

from zodbsession.quixote.app import QuixoteApp, cookie_policy_from, make_app, quixote_commit_veto
from zodbsession.quixote.data import connection, root
from zodbsession.quixote.manager import ZODBSessionManager
from zodbsession.quixote.publisher import ThreadSafePublisher
from zodbsession.quixote.session import QuixoteSession

__all__ = ["QuixoteApp", "QuixoteSession", "ThreadSafePublisher", "ZODBSessionManager", "connection",
           "cookie_policy_from", "make_app", "quixote_commit_veto", "root"]
