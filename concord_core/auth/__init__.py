"""Principals, the one access policy, and accounts."""

from concord_core.auth.policy import AccessDenied, Action, Visibility, WorkspaceTarget, authorize, can_read
from concord_core.auth.principal import ANONYMOUS, Principal

__all__ = [
    "ANONYMOUS",
    "AccessDenied",
    "Action",
    "Principal",
    "Visibility",
    "WorkspaceTarget",
    "authorize",
    "can_read",
]
