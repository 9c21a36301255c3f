"""zodbsession: web sessions as persistent objects in ZODB, committed with the request.

The public surface is what this module exports; everything else is internal.
"""

from zodbsession.asgi import SessionMiddleware
from zodbsession.cookies import CookiePolicy
from zodbsession.db import open_db
from zodbsession.errors import (
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
from zodbsession.manager import SessionManager
from zodbsession.publisher import SessionPublisher, default_commit_veto
from zodbsession.registry import (
    Scope,
    SessionRegistry,
    after_abort,
    after_commit,
    before_commit,
    current_connection,
    current_session,
    registry,
)
from zodbsession.request_session import RequestSession
from zodbsession.retry import RetryPolicy
from zodbsession.session import Session
from zodbsession.store import SessionContainer
from zodbsession.transact import TransactionCore

__all__ = [
    "CommitOutcomeUnknown",
    "ConfigError",
    "CookiePolicy",
    "DatabaseLocked",
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
