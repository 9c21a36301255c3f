"""zodbsession: web sessions as persistent objects in ZODB, committed with the request.

The public surface is what this module exports; everything else is internal.
"""

from zodbsession.cookies import CookiePolicy
from zodbsession.db import open_db
from zodbsession.errors import (
    CommitOutcomeUnknown,
    ConfigError,
    DatabaseLocked,
    NoActiveRequest,
    PublishError,
    Redirect,
    SessionLimitReached,
    SessionNotFound,
    SessionTooLarge,
    StorageURIError,
    StorageWriteFailed,
    UncommittedChanges,
    UnstorableSessionValue,
    ZodbSessionError,
)
from zodbsession.manager import SessionManager
from zodbsession.publisher import SessionPublisher, default_commit_veto
from zodbsession.registry import (
    Scope,
    SessionRegistry,
    current_connection,
    current_session,
    registry,
)
from zodbsession.request_session import RequestSession
from zodbsession.session import Session
from zodbsession.store import SessionContainer

__all__ = [
    "CommitOutcomeUnknown",
    "ConfigError",
    "CookiePolicy",
    "DatabaseLocked",
    "NoActiveRequest",
    "PublishError",
    "Redirect",
    "RequestSession",
    "Scope",
    "Session",
    "SessionContainer",
    "SessionLimitReached",
    "SessionManager",
    "SessionNotFound",
    "SessionTooLarge",
    "SessionPublisher",
    "SessionRegistry",
    "StorageURIError",
    "StorageWriteFailed",
    "UncommittedChanges",
    "UnstorableSessionValue",
    "ZodbSessionError",
    "current_connection",
    "current_session",
    "default_commit_veto",
    "open_db",
    "registry",
]
