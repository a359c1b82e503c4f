"""What ``concord worker``'s fork server imports once, so that each worker process it forks starts warm:
Concord's runtime and the installed lenses (importing a lens's module is most of a worker's start-up)."""

from __future__ import annotations

from concord_core.api.gql import schema
from concord_core.plugins.registry import discover
from workers import rq_worker

__all__ = ["rq_worker", "schema"]

discover()  # imports every installed lens's module (the loaded objects are not kept)
