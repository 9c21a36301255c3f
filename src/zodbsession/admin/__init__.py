"""The admin listener: Prometheus metrics, a dashboard, session search and revocation.

``AdminApp`` (in ``app``) is the WSGI application; ``access`` decides who may
use it; ``sampler`` keeps the recent history its charts draw; ``page`` writes
its HTML and SVG.
"""

from __future__ import annotations

from zodbsession.admin.access import ADMIN_COOKIE, AdminAccess
from zodbsession.admin.app import AdminApp, find_by_prefix, last_packs
from zodbsession.admin.sampler import Sample, Sampler

__all__ = ["ADMIN_COOKIE", "AdminAccess", "AdminApp", "Sample", "Sampler", "find_by_prefix", "last_packs"]
