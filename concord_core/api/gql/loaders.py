"""Per-request DataLoaders: the nested fields of a page of items load in one statement per field, not
one per item."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session
from strawberry.dataloader import DataLoader

from concord_core.db import models

if TYPE_CHECKING:
    from concord_core.api.gql.context import Context

K = TypeVar("K")
V = TypeVar("V")


def _loader(context: Context, fetch: Callable[[Session, list[K]], Sequence[V]]) -> DataLoader[K, V]:
    async def load(keys: list[K]) -> Sequence[V]:
        return await context.read(fetch, keys)

    return DataLoader(load_fn=load)


def _dtus(session: Session, keys: list[str]) -> list[models.Dtu | None]:
    rows = {row.id: row for row in session.scalars(select(models.Dtu).where(models.Dtu.id.in_(keys)))}
    return [rows.get(key) for key in keys]


def _grouped(session: Session, model: Any, column: Any, order: Any, keys: list[str]) -> list[list[Any]]:
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in session.scalars(select(model).where(column.in_(keys)).order_by(column, order)):
        groups[getattr(row, column.key)].append(row)
    return [groups[key] for key in keys]


def _dtu_versions(session: Session, keys: list[str]) -> list[list[models.DtuVersion]]:
    table = models.DtuVersion
    return _grouped(session, table, table.dtu_id, table.version, keys)


def _artifact_versions(session: Session, keys: list[str]) -> list[list[models.ArtifactVersion]]:
    table = models.ArtifactVersion
    return _grouped(session, table, table.artifact_id, table.version, keys)


class Loaders:
    """Created lazily, once per request, by the GraphQL context."""

    def __init__(self, context: Context) -> None:
        self.dtus: DataLoader[str, models.Dtu | None] = _loader(context, _dtus)
        self.dtu_versions: DataLoader[str, list[models.DtuVersion]] = _loader(context, _dtu_versions)
        self.artifact_versions: DataLoader[str, list[models.ArtifactVersion]] = _loader(
            context, _artifact_versions
        )
