"""The types lenses exchange with the kernel through their hooks (a public, versioned API).

* :class:`GraphQLContribution`: what ``concord_graphql_types()`` returns.
* :class:`JobContext` and :data:`JobHandler`: what ``concord_job_handlers()`` maps job types to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from concord_core.operators.base import OperationContext

#: The version of this contract; a manifest's ``concordVersion`` range is checked against Concord's version.
CONTRACT_VERSION = 1


@dataclass(frozen=True)
class GraphQLContribution:
    """Strawberry types whose fields a lens adds to the root types, plus extra types it wants exposed.

    Each entry of ``query``, ``mutation`` and ``subscription`` is a ``@strawberry.type`` class; its fields
    are merged into ``Query``, ``Mutation`` or ``Subscription``. A field or type name that another lens or
    the kernel already has is a validation error, never a silent override.
    """

    query: Sequence[type] = ()
    mutation: Sequence[type] = ()
    subscription: Sequence[type] = ()
    types: Sequence[type] = field(default_factory=tuple)


class JobCancelled(Exception):
    """Raised inside a handler by :meth:`JobContext.progress` or :meth:`JobContext.checkpoint` once the job
    was cancelled; the runner records the job as cancelled."""


class PermanentJobError(Exception):
    """Raise inside a handler to fail the job at once, without retrying: retrying cannot help (bad input, a
    source that does not exist). Any other exception is retried, with backoff, until ``maxAttempts``."""


class JobContext(Protocol):
    """What a job handler gets: its last checkpoint, and ways to save progress and artifacts.

    The jobs runtime makes every call durable: a checkpoint is committed before ``checkpoint`` returns, so a
    handler killed afterwards resumes from it on its next attempt.
    """

    @property
    def job_id(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def operations(self) -> OperationContext:
        """Operators acting as the user who started the job (reads and writes go through the policy)."""
        ...

    @property
    def checkpoint_state(self) -> dict[str, Any] | None:
        """The state passed to the last committed ``checkpoint`` call, or None on a fresh start."""
        ...

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Durably save progress; raises JobCancelled if the job was cancelled."""
        ...

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress (0.0 to 1.0); raises JobCancelled if the job was cancelled."""
        ...

    def write_artifact(
        self,
        *,
        step: str,
        role: str,
        name: str,
        content: bytes | IO[bytes],
        media_type: str,
        label: str = "original",
        artifact_id: str | None = None,
    ) -> tuple[str, int]:
        """Store an output (content-addressed, keyed by job and ``step``/``role`` so a re-run writes no
        duplicate); returns (artifact id, version). With ``artifact_id``, adds a version to that artifact."""
        ...

    @property
    def cancelled(self) -> bool:
        """Whether someone asked to cancel this job."""
        ...


#: ``handler(ctx, payload) -> output``; must be idempotent (it may run again after a crash).
JobHandler = Callable[[JobContext, dict[str, Any]], dict[str, Any]]
