"""The one policy: every read and write is decided by :func:`authorize`, nowhere else.

Operators call it on the write path and the browse service turns :func:`readable_filter` into the SQL
access predicate, so a list, a count and a single fetch can never disagree.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import ColumnElement, false, or_, true

from concord_core.auth.principal import WRITE_SCOPE, Principal

WRITER_ROLES = frozenset({"owner", "editor"})


class Action(enum.StrEnum):
    READ = "read"
    CREATE = "create"  # resource: the workspace to create in
    EDIT = "edit"
    PUBLISH = "publish"  # change visibility
    DELETE = "delete"
    MANAGE = "manage"  # resource: a workspace; change its members
    ADMINISTER = "administer"  # resource: the instance; manage users


class Visibility(enum.StrEnum):
    PRIVATE = "private"
    WORKSPACE = "workspace"
    UNLISTED = "unlisted"
    PUBLIC = "public"


class Owned(Protocol):
    """Anything access is decided on: its workspace, owner and visibility."""

    @property
    def workspace_id(self) -> str: ...
    @property
    def owner_id(self) -> str: ...
    @property
    def visibility(self) -> str: ...


class WorkspaceTarget:
    """The target of a CREATE: the workspace the new thing will belong to."""

    def __init__(self, workspace_id: str) -> None:
        self.workspace_id = workspace_id
        self.owner_id = ""
        self.visibility = Visibility.PRIVATE.value


class InstanceTarget:
    """The target of an ADMINISTER: the instance as a whole."""

    workspace_id = ""
    owner_id = ""
    visibility = Visibility.PRIVATE.value


class AccountTarget:
    """The target of a change to one person's own account (their API keys, the workspaces they start):
    theirs alone, or an administrator's. Anyone else may not learn that it exists."""

    def __init__(self, user_id: str | None) -> None:
        self.workspace_id = ""
        self.owner_id = user_id or ""
        self.visibility = Visibility.PRIVATE.value


class AccessDenied(Exception):
    """The principal may not do this. ``hidden`` means it may not even know the resource exists."""

    def __init__(self, message: str, *, hidden: bool) -> None:
        super().__init__(message)
        self.hidden = hidden


def can_read(principal: Principal, resource: Owned) -> bool:
    if principal.is_admin:
        return True
    if resource.visibility in (Visibility.PUBLIC, Visibility.UNLISTED):
        return True
    if principal.user_id is None:
        return False
    if resource.visibility == Visibility.WORKSPACE:
        return principal.role_in(resource.workspace_id) is not None
    return resource.owner_id == principal.user_id


def authorize(
    principal: Principal, action: Action, resource: Owned | WorkspaceTarget | InstanceTarget
) -> None:
    """Return if ``principal`` may do ``action`` on ``resource``; raise :class:`AccessDenied` if not."""
    if action is Action.ADMINISTER:
        if principal.is_admin and WRITE_SCOPE in principal.scopes:
            return
        raise AccessDenied("this needs an administrator", hidden=False)
    if action is Action.MANAGE:
        role = principal.role_in(resource.workspace_id)
        if WRITE_SCOPE in principal.scopes and (principal.is_admin or role == "owner"):
            return
        raise AccessDenied(
            "this needs an owner of the workspace", hidden=role is None and not principal.is_admin
        )
    if action is Action.CREATE:
        role = principal.role_in(resource.workspace_id)
        if WRITE_SCOPE in principal.scopes and (principal.is_admin or role in WRITER_ROLES):
            return
        raise AccessDenied("you cannot create things in this workspace", hidden=role is None)
    if not can_read(principal, resource):
        raise AccessDenied("not found", hidden=True)
    if action is Action.READ:
        return
    if WRITE_SCOPE not in principal.scopes:
        raise AccessDenied("this credential is read-only", hidden=False)
    if principal.is_admin:
        return
    role = principal.role_in(resource.workspace_id)
    is_owner = resource.owner_id == principal.user_id
    if action in (Action.PUBLISH, Action.DELETE):
        allowed = is_owner or role == "owner"
    else:  # EDIT
        allowed = is_owner or (role in WRITER_ROLES and resource.visibility != Visibility.PRIVATE)
    if not allowed:
        raise AccessDenied(f"you cannot {action.value} this", hidden=False)


def readable_filter(principal: Principal, model: type, *, listed: bool = True) -> ColumnElement[bool]:
    """SQL for "rows ``principal`` may read" on a model with workspace_id, owner_id and visibility.

    With ``listed`` (browsing), unlisted rows of others are left out: they are reachable by ID only.
    """
    if principal.is_admin:
        return true()
    return _readable_filter(model, principal.user_id, tuple(sorted(principal.roles)), listed)


@lru_cache(maxsize=4096)
def _readable_filter(
    model: type, user_id: str | None, workspace_ids: tuple[str, ...], listed: bool
) -> ColumnElement[bool]:
    # Made once per person and set of workspaces: building the expression costs more than compiling
    # the statement around it (which SQLAlchemy caches), and an expression never changes once made.
    visibility = model.visibility  # type: ignore[attr-defined]
    clauses = [visibility == Visibility.PUBLIC.value]
    if not listed:
        clauses.append(visibility == Visibility.UNLISTED.value)
    if user_id is not None:
        clauses.append(model.owner_id == user_id)  # type: ignore[attr-defined]
        if workspace_ids:
            clauses.append(
                (visibility != Visibility.PRIVATE.value) & model.workspace_id.in_(workspace_ids)  # type: ignore[attr-defined]
            )
    return or_(*clauses) if clauses else false()


def readable_workspace_filter(principal: Principal, model: type) -> ColumnElement[bool]:
    """SQL for rows with no visibility of their own (jobs): readable by their owner and workspace members."""
    if principal.is_admin:
        return true()
    clauses = []
    if principal.user_id is not None:
        clauses.append(model.owner_id == principal.user_id)  # type: ignore[attr-defined]
    if principal.roles:
        clauses.append(model.workspace_id.in_(list(principal.roles)))  # type: ignore[attr-defined]
    return or_(*clauses) if clauses else false()


def can_read_in_workspace(principal: Principal, workspace_id: str, owner_id: str | None) -> bool:
    """Rows with no visibility of their own (jobs, workflows), one at a time: the same rule as
    :func:`readable_workspace_filter`."""
    if principal.is_admin:
        return True
    if principal.user_id is None:
        return False
    return owner_id == principal.user_id or principal.role_in(workspace_id) is not None


def readable_events_filter(principal: Principal, model: type) -> ColumnElement[bool]:
    """SQL for events a principal may tail: those of the workspaces they belong to (all, for admins). Rows
    that pass are then checked one by one with :func:`can_read_event`."""
    if principal.is_admin:
        return true()
    if principal.user_id is None or not principal.roles:
        return false()
    return model.workspace_id.in_(list(principal.roles))  # type: ignore[attr-defined]


class _EntityState:
    def __init__(self, state: Mapping[str, Any]) -> None:
        self.workspace_id = str(state.get("workspace_id", ""))
        self.owner_id = str(state.get("owner_id") or "")
        self.visibility = str(state.get("visibility", Visibility.PRIVATE.value))


def can_read_event(principal: Principal, workspace_id: str | None, state: Mapping[str, Any] | None) -> bool:
    """Whether a principal may see an event: they belong to its workspace and, when the event carries the
    state of something with a visibility of its own (a DTU, an artifact, a lens item), may read that too,
    so the log never shows a private thing to someone who could not open it."""
    if principal.is_admin:
        return True
    if workspace_id is None or principal.role_in(workspace_id) is None:
        return False
    if state is not None and "visibility" in state:
        return can_read(principal, _EntityState(state))
    return True
