"""zodbsession: web sessions as persistent objects in ZODB, committed with the request.

The public surface is what this module exports; everything else is internal.
"""

from zodbsession.core.db import open_db
from zodbsession.core.errors import (
    CommitOutcomeUnknown,
    ConfigError,
    DatabaseLocked,
    InvalidUserId,
    NoActiveRequest,
    NoUnitOfWork,
    PublishError,
    Redirect,
    RequestBodyTooLarge,
    SessionBusy,
    SessionLimitReached,
    SessionNotFound,
    SessionTooLarge,
    SessionWaitTimeout,
    StorageUnavailable,
    StorageURIError,
    StorageWriteFailed,
    UncommittedChanges,
    UnsavedSessionChanges,
    UnstorableSessionValue,
    ZodbSessionError,
)
from zodbsession.core.manager import SessionManager
from zodbsession.core.registry import (
    Scope,
    SessionRegistry,
    after_abort,
    after_commit,
    before_commit,
    current_connection,
    current_session,
    registry,
)
from zodbsession.core.request_session import RequestSession
from zodbsession.core.retry import RetryPolicy
from zodbsession.core.session import Session
from zodbsession.core.store import SessionContainer
from zodbsession.core.transact import TransactionCore
from zodbsession.web.asgi import SessionMiddleware
from zodbsession.web.cookies import CookiePolicy
from zodbsession.web.options import FrontDoorOptions
from zodbsession.web.wsgi.publisher import SessionPublisher, default_commit_veto

__all__ = [
    "CommitOutcomeUnknown",
    "ConfigError",
    "CookiePolicy",
    "DatabaseLocked",
    "FrontDoorOptions",
    "InvalidUserId",
    "NoActiveRequest",
    "NoUnitOfWork",
    "PublishError",
    "Redirect",
    "RequestBodyTooLarge",
    "RequestSession",
    "RetryPolicy",
    "Scope",
    "Session",
    "SessionBusy",
    "SessionContainer",
    "SessionLimitReached",
    "SessionManager",
    "SessionMiddleware",
    "SessionNotFound",
    "SessionPublisher",
    "SessionRegistry",
    "SessionTooLarge",
    "SessionWaitTimeout",
    "StorageURIError",
    "StorageUnavailable",
    "StorageWriteFailed",
    "TransactionCore",
    "UncommittedChanges",
    "UnsavedSessionChanges",
    "UnstorableSessionValue",
    "ZodbSessionError",
    "after_abort",
    "after_commit",
    "before_commit",
    "current_connection",
    "current_session",
    "default_commit_veto",
    "open_db",
    "registry",
]
