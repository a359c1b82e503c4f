"""What a browsable data source is: a description the browse service turns into connections.

A :class:`Browsable` names its model, the filters it accepts, the facets it offers, its sort orders and its
full-text search, all by the model's attribute names. Its access predicate is one of the policy's SQL
filters (:mod:`concord_core.auth.policy`), never code of its own, so items, counts, facets and search hits
are all scoped the same way. Lenses return these from ``concord_browsables()``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, inspect
from sqlalchemy.orm import Mapper

from concord_core.auth.policy import readable_filter
from concord_core.auth.principal import Principal

AccessPredicate = Callable[[Principal, type], ColumnElement[bool]]


class FilterKind(enum.StrEnum):
    EQUALS = "equals"  # value in a list of allowed values
    TAGS = "tags"  # any of / all of, through the entity_tags index
    RANGE = "range"  # a datetime range (from inclusive, to exclusive)


@dataclass(frozen=True)
class Filter:
    name: str
    attribute: str | None  # the model attribute filtered on; None for TAGS
    kind: FilterKind = FilterKind.EQUALS


@dataclass(frozen=True)
class Facet:
    """A field whose values are counted. ``counted`` facets are kept in browse_counts by the write path."""

    name: str
    attribute: str | None  # the model attribute counted; None for the tags facet
    counted: bool = True


@dataclass(frozen=True)
class Search:
    """Full-text search: the FTS5 table on SQLite and the tsvector column on PostgreSQL."""

    sqlite_table: str
    postgres_column: str
    postgres_config: str = "english"
    #: The PostgreSQL vector also holds lexemes naming its row's access scopes (migration 0008,
    #: :func:`concord_core.browse.scopes.search_scopes`), so the GIN index can leave out rows the caller
    #: cannot read before any row is visited.
    scoped: bool = False
    #: The column whose words rank first (weight A of the vector), with a GIN index on its own vector
    #: and access scopes (``ix_<table>_title_search``, migration 0008): PostgreSQL ranks by tiers.
    postgres_title: str | None = None


@dataclass(frozen=True)
class Browsable:
    name: str  # "dtus": also the REST path /api/<name>/paginated and the key in browse indexes
    model: type
    node_type: str  # the GraphQL type its rows become, for global ids
    sorts: dict[str, str]  # name -> model attribute; the model's id breaks ties
    filters: dict[str, Filter] = field(default_factory=dict)
    facets: dict[str, Facet] = field(default_factory=dict)
    search: Search | None = None
    tagged: bool = False  # rows have a `tags` list mirrored into entity_tags
    access: AccessPredicate = readable_filter

    @property
    def table_name(self) -> str:
        return str(self.model.__tablename__)  # type: ignore[attr-defined]

    def column(self, attribute: str) -> ColumnElement[Any]:
        column: ColumnElement[Any] = getattr(self.model, attribute)
        return column

    @property
    def attributes(self) -> list[str]:
        """The names of all the model's column attributes (a whole row, as plain columns)."""
        mapper: Mapper[Any] = inspect(self.model)
        return [attribute.key for attribute in mapper.column_attrs]

    @property
    def counted_facets(self) -> list[Facet]:
        return [facet for facet in self.facets.values() if facet.counted]
