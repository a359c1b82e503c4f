"""Who is asking: the principal every operator and browse query is evaluated for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

READ_SCOPE = "read"
WRITE_SCOPE = "write"


@dataclass(frozen=True)
class Principal:
    """An authenticated user (or nobody), their workspace roles and the scopes of their credential."""

    user_id: str | None
    roles: Mapping[str, str] = field(default_factory=dict)  # workspace id -> owner | editor | viewer
    is_admin: bool = False
    scopes: frozenset[str] = frozenset({READ_SCOPE, WRITE_SCOPE})
    default_workspace_id: str | None = None
    session_id: str | None = None  # the sign-in session behind a token, for logout

    @property
    def is_authenticated(self) -> bool:
        return self.user_id is not None

    def role_in(self, workspace_id: str) -> str | None:
        return self.roles.get(workspace_id)


ANONYMOUS = Principal(user_id=None, scopes=frozenset({READ_SCOPE}))
