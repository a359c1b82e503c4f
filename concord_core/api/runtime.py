"""The running instance: settings, database, object store and the principal for a request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from concord_core.auth.accounts import ensure_local_owner, load_principal
from concord_core.auth.principal import ANONYMOUS, Principal
from concord_core.db.engine import Database
from concord_core.operators.base import AfterCommit, OperationContext
from concord_core.settings import AuthMode, Settings
from concord_core.storage import BlobStore, open_store


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: BlobStore
    local_owner_id: str | None = None
    after_commit: list[AfterCommit] = field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        return cls(settings=settings, db=Database(settings.resolved_database_url), store=open_store(settings))

    def start(self) -> None:
        """Prepare a migrated database for serving."""
        if self.settings.auth_mode is AuthMode.PUBLIC:
            self.local_owner_id = ensure_local_owner(self.db)

    def principal_for_user(self, user_id: str) -> Principal:
        with self.db.read() as session:
            return load_principal(session, user_id) or ANONYMOUS

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The principal behind a request's credentials (the accounts issue adds keys and tokens)."""
        return self.anonymous_principal()

    def anonymous_principal(self) -> Principal:
        """Who a request without credentials is: the local owner in public mode, else nobody."""
        if self.settings.auth_mode is AuthMode.PUBLIC and self.local_owner_id:
            return self.principal_for_user(self.local_owner_id)
        return ANONYMOUS

    def operation_context(self, principal: Principal) -> OperationContext:
        return OperationContext(
            db=self.db, store=self.store, principal=principal, settings=self.settings,
            after_commit=self.after_commit,
        )  # fmt: skip

    def close(self) -> None:
        self.db.dispose()
