"""The per-request GraphQL context: the runtime, the principal, and a way to run blocking work."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from strawberry.fastapi import BaseContext
from strawberry.types import Info

from concord_core.api.gql.loaders import Loaders
from concord_core.api.runtime import Runtime
from concord_core.auth.principal import Principal
from concord_core.operators.base import OperationContext

T = TypeVar("T")


class Context(BaseContext):
    def __init__(self, runtime: Runtime, principal: Principal) -> None:
        super().__init__()
        self.runtime = runtime
        self.principal = principal
        #: A websocket that must still authenticate in its connection_init payload (apikey mode).
        self.awaiting_credentials = False
        self._loaders: Loaders | None = None

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = Loaders(self)
        return self._loaders

    @property
    def ops(self) -> OperationContext:
        return self.runtime.operation_context(self.principal)

    async def run(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (database, object store) off the event loop."""
        return await anyio.to_thread.run_sync(partial(func, *args, **kwargs))

    async def read(self, func: Callable[..., T], *args: Any, transaction: bool = True) -> T:
        """Run ``func(session, *args)`` in a read session, off the event loop (``transaction=False``: see
        :meth:`Database.read`)."""

        def work() -> T:
            with self.runtime.db.read(transaction=transaction) as session:
                return func(session, *args)

        return await anyio.to_thread.run_sync(work)


GqlInfo = Info[Context, None]
