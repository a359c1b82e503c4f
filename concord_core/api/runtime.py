"""The running instance: settings, database, object store, lenses, the browse service, and the principal
for a request."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio.to_thread

from concord_core.auth.accounts import ensure_local_owner, load_principal
from concord_core.auth.authenticate import authenticate, authenticate_async, credential_from
from concord_core.auth.principal import ANONYMOUS, Principal
from concord_core.browse.service import BrowseService
from concord_core.browse.source import Browsable
from concord_core.browse.sources import KERNEL_BROWSABLES
from concord_core.db.async_reads import AsyncReads
from concord_core.db.engine import Database
from concord_core.jobs.service import JobService
from concord_core.operators.base import AfterCommit, OperationContext
from concord_core.operators.lens_items import seed_items
from concord_core.plugins.registry import LensRegistry
from concord_core.settings import AuthMode, Environment, Settings
from concord_core.storage import BlobStore, open_store


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: BlobStore
    lenses: LensRegistry
    local_owner_id: str | None = None
    after_commit: list[AfterCommit] = field(default_factory=list)
    browse: BrowseService = field(init=False)
    async_reads: AsyncReads | None = None
    jobs: JobService = field(init=False)

    def __post_init__(self) -> None:
        self.browse = BrowseService(self.db)
        # Job runners start with the app (JobService.start); the hook wakes them after each commit.
        self.jobs = JobService(self.settings, self.db, self.store, self.lenses, self.after_commit)
        self.after_commit.append(self.jobs.after_commit)

    @classmethod
    def open(cls, settings: Settings, lenses: LensRegistry | None = None) -> Runtime:
        """A runtime on the configured database and store, with the given lenses (default: the installed
        ones, which raises InvalidLenses if any is invalid and CONCORD_SKIP_INVALID_LENSES is off)."""
        if lenses is None:
            # Imported here: the schema module imports the GraphQL types, which import this module.
            from concord_core.api.gql.schema import load_lenses

            lenses = load_lenses(settings)
        return cls(
            settings=settings,
            db=Database(settings.resolved_database_url),
            store=open_store(settings),
            lenses=lenses,
        )

    @property
    def browsables(self) -> dict[str, Browsable]:
        """Everything Global can browse: the kernel's sources and every active lens's."""
        sources = {browsable.name: browsable for browsable in KERNEL_BROWSABLES}
        for lens in self.lenses.active:
            sources.update({browsable.name: browsable for browsable in lens.browsables})
        return sources

    def start(self) -> None:
        """Prepare a migrated database for serving."""
        if self.settings.auth_mode is AuthMode.PUBLIC:
            self.local_owner_id = ensure_local_owner(self.db)
        if self.settings.environment is Environment.DEVELOPMENT and self.local_owner_id:
            seed_items(self.operation_context(self.principal_for_user(self.local_owner_id)))

    def principal_for_user(self, user_id: str) -> Principal:
        with self.db.read() as session:
            return load_principal(session, user_id) or ANONYMOUS

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The principal behind a request's credentials; raises AuthenticationFailed for bad ones."""
        return authenticate(self.db, self.settings, credential_from(headers), self.local_owner_id)

    async def authenticate_async(self, headers: Mapping[str, str]) -> Principal:
        """:meth:`authenticate` from the event loop: its query awaited there on PostgreSQL (once
        :meth:`open_async_reads` has run on this loop), else in a worker thread."""
        reads = self.async_reads
        if reads is None or not reads.usable():
            return await anyio.to_thread.run_sync(self.authenticate, headers)
        credential = credential_from(headers)
        return await authenticate_async(reads, self.db, self.settings, credential, self.local_owner_id)

    async def open_async_reads(self) -> None:
        """On PostgreSQL, let the running event loop read credentials itself (the app's lifespan)."""
        if self.db.is_postgres:
            self.async_reads = AsyncReads(self.db)

    async def close_async_reads(self) -> None:
        reads, self.async_reads = self.async_reads, None
        if reads is not None:
            await reads.close()

    def operation_context(self, principal: Principal) -> OperationContext:
        return OperationContext(
            db=self.db,
            store=self.store,
            principal=principal,
            settings=self.settings,
            lenses=self.lenses,
            after_commit=self.after_commit,
        )

    def close(self) -> None:
        self.jobs.close()
        self.db.dispose()


def freeze_startup_heap() -> None:
    """Take what start-up made (the schema, the lenses, the runtime) out of the garbage collector's sight:
    it lives as long as the process, and otherwise every full collection that a request's or a job's
    garbage triggers walks it all again (0.3 ms per page of DTUs, measured). For long-lived processes
    (``concord serve``, RQ workers) only: what is frozen is never collected."""
    gc.collect()
    gc.freeze()
