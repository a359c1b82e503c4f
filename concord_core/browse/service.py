"""The browse service: one implementation of paging, counting, faceting and search for every browsable.

Every query it builds starts from the browsable's access predicate, so items, totals, facet counts and
search hits always agree and never include a row the caller cannot read. Facets are disjunctive: a field's
counts ignore that field's own filter. Unfiltered totals and counted facets are read from the
``browse_counts`` index (see :mod:`.indexes`); everything else is counted live, within a time budget.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Double, Integer, cast, column, func, literal_column, select, table, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from concord_core.auth.principal import Principal
from concord_core.browse.connection import AnySelect, Ordering, Page, count, paginate
from concord_core.browse.indexes import TOTAL
from concord_core.browse.source import Browsable, FilterKind
from concord_core.db.engine import Database
from concord_core.db.models import BrowseCount, EntityTag
from concord_core.operators.errors import ErrorCode, OperatorError

DEFAULT_FACET_VALUES = 20
MAX_FACET_VALUES = 100
MAX_FILTER_VALUES = 100
RELEVANCE = "relevance"


@dataclass(frozen=True)
class TagFilter:
    any_of: Sequence[str] = ()
    all_of: Sequence[str] = ()


@dataclass(frozen=True)
class RangeFilter:
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive


FilterValue = Sequence[str] | TagFilter | RangeFilter


@dataclass(frozen=True)
class BrowseRequest:
    filters: dict[str, FilterValue] = field(default_factory=dict)
    search: str | None = None
    sort: str | None = None  # default: relevance when searching, else created
    descending: bool = True


@dataclass(frozen=True)
class FacetValue:
    value: str
    count: int


@dataclass(frozen=True)
class FacetResult:
    field: str
    values: list[FacetValue]
    truncated: bool = False
    timed_out: bool = False


def _invalid(message: str, field_name: str) -> OperatorError:
    return OperatorError.single(ErrorCode.VALIDATION, message, field_name)


def _storable(values: Sequence[str]) -> list[str]:
    """The filter values a row could hold. No stored text holds NUL (PostgreSQL cannot store it, and
    refuses it in a query), so a value with one matches nothing rather than reaching the database."""
    return [value for value in values if "\x00" not in value]


def _search_terms(text_query: str) -> list[str]:
    return re.findall(r"\w+", text_query.lower())[:32]


class BrowseService:
    def __init__(self, db: Database, facet_budget_seconds: float = 1.0) -> None:
        self.db = db
        self.facet_budget_seconds = facet_budget_seconds

    # -- query building -------------------------------------------------------------------------------

    def _check(self, browsable: Browsable, request: BrowseRequest) -> None:
        for name, value in request.filters.items():
            spec = browsable.filters.get(name)
            if spec is None:
                raise _invalid(f"{browsable.name} cannot be filtered by {name!r}", f"filter.{name}")
            if isinstance(value, RangeFilter):
                if any(moment is not None and moment.tzinfo is None for moment in (value.start, value.end)):
                    raise _invalid(
                        "give times with a time zone (for example 2025-01-31T12:00:00Z)", f"filter.{name}"
                    )
                continue
            values = [*value.any_of, *value.all_of] if isinstance(value, TagFilter) else list(value)
            if len(values) > MAX_FILTER_VALUES:
                raise _invalid(f"at most {MAX_FILTER_VALUES} values per filter", f"filter.{name}")
        if request.search is not None and browsable.search is None:
            raise _invalid(f"{browsable.name} cannot be searched", "search")
        if request.sort is not None and request.sort != RELEVANCE and request.sort not in browsable.sorts:
            raise _invalid(f"{browsable.name} cannot be sorted by {request.sort!r}", "orderBy")
        if request.sort == RELEVANCE and not request.search:
            raise _invalid("relevance ordering needs a search", "orderBy")

    def _conditions(
        self, browsable: Browsable, request: BrowseRequest, skip: str | None = None
    ) -> list[ColumnElement[bool]]:
        """The filter conditions, leaving out the filter named ``skip`` (for disjunctive facets)."""
        conditions: list[ColumnElement[bool]] = []
        model_id = browsable.column("id")
        for name, value in request.filters.items():
            if name == skip:
                continue
            spec = browsable.filters[name]
            if spec.kind is FilterKind.TAGS:
                assert isinstance(value, TagFilter)
                tagged = select(EntityTag.entity_id).where(EntityTag.source == browsable.name)
                if value.any_of:
                    conditions.append(model_id.in_(tagged.where(EntityTag.tag.in_(_storable(value.any_of)))))
                for tag in value.all_of:
                    conditions.append(model_id.in_(tagged.where(EntityTag.tag.in_(_storable([tag])))))
            elif spec.kind is FilterKind.RANGE:
                assert isinstance(value, RangeFilter) and spec.attribute is not None
                column_ = browsable.column(spec.attribute)
                if value.start is not None:
                    conditions.append(column_ >= value.start)
                if value.end is not None:
                    conditions.append(column_ < value.end)
            else:
                assert spec.attribute is not None and not isinstance(value, TagFilter | RangeFilter)
                conditions.append(browsable.column(spec.attribute).in_(_storable(value)))
        return conditions

    def _search(
        self, session: Session, browsable: Browsable, query: AnySelect, terms: list[str]
    ) -> tuple[AnySelect, ColumnElement[Any]]:
        """Restrict ``query`` to rows matching every term; returns it with a rank (higher is better)."""
        assert browsable.search is not None
        if session.get_bind().dialect.name == "postgresql":
            vector: ColumnElement[Any] = literal_column(
                f"{browsable.table_name}.{browsable.search.postgres_column}"
            )
            tsquery = func.to_tsquery(browsable.search.postgres_config, " & ".join(f"{t}:*" for t in terms))
            # As double precision: ts_rank_cd's real comes back rounded to the nearest short decimal
            # (1.4 for 1.39999997...), which the real value is then below, so a cursor repeated its row.
            return query.where(vector.op("@@")(tsquery)), cast(func.ts_rank_cd(vector, tsquery), Double)
        name = browsable.search.sqlite_table
        fts = table(name, column("rowid"), column("title"), column("body"))
        match = " ".join(f'"{term}"*' for term in terms)
        rowid: ColumnElement[Any] = literal_column(f"{browsable.table_name}.rowid")
        query = query.join(fts, fts.c.rowid == rowid).where(literal_column(name).op("MATCH")(match))

        def marks(index: int, text_column: ColumnElement[Any]) -> ColumnElement[int]:
            """Twice the number of matches a column holds: highlight() wraps each in two marker characters
            (an empty column, such as the body of an artifact without tags, is NULL and holds none)."""
            marked = func.highlight(literal_column(name), index, "\x01", "\x02")
            return func.coalesce(func.length(marked) - func.length(text_column), 0, type_=Integer)

        # Not bm25: its scores move with corpus-wide statistics whenever any row is written, so a cursor
        # holding one would skip or repeat rows. Matches weighted like PostgreSQL's (title 1.0, the rest
        # 0.4), times 10: an integer that depends on the row and the search alone.
        return query, 5 * marks(0, fts.c.title) + 2 * marks(1, fts.c.body)

    def _query(
        self,
        session: Session,
        principal: Principal,
        browsable: Browsable,
        request: BrowseRequest,
        skip: str | None = None,
    ) -> tuple[AnySelect, ColumnElement[Any] | None]:
        model = browsable.model
        query: AnySelect = select(model).where(
            browsable.access(principal, model), *self._conditions(browsable, request, skip)
        )
        if request.search is None:
            return query, None
        terms = _search_terms(request.search)
        if not terms:
            return query.where(literal_column("1") == 0), None
        return self._search(session, browsable, query, terms)

    # -- the three answers ----------------------------------------------------------------------------

    def page(
        self,
        session: Session,
        principal: Principal,
        browsable: Browsable,
        request: BrowseRequest,
        *,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> Page[Any]:
        self._check(browsable, request)
        query, rank = self._query(session, principal, browsable, request)
        sort = request.sort or (RELEVANCE if rank is not None else "created")
        if sort == RELEVANCE and rank is not None:
            ordering = Ordering(RELEVANCE, (rank, browsable.column("id")), descending=True)
        else:
            key = browsable.column(browsable.sorts[sort])
            direction = "desc" if request.descending else "asc"
            ordering = Ordering(f"{sort}:{direction}", (key, browsable.column("id")), request.descending)
        return paginate(session, query, ordering, first=first, after=after, last=last, before=before)

    def _indexed(self, browsable: Browsable, request: BrowseRequest, facet: str) -> bool:
        """Whether a count can come from browse_counts: no search, and no filter but the facet's own."""
        return request.search is None and all(name == facet for name in request.filters)

    def _from_index(
        self, session: Session, principal: Principal, browsable: Browsable, facet: str
    ) -> AnySelect:
        query: AnySelect = (
            select(BrowseCount.value, func.sum(BrowseCount.count).label("n"))
            .where(
                BrowseCount.source == browsable.name,
                BrowseCount.facet == facet,
                browsable.access(principal, BrowseCount),
            )
            .group_by(BrowseCount.value)
        )
        return query

    def total(
        self, session: Session, principal: Principal, browsable: Browsable, request: BrowseRequest
    ) -> int:
        self._check(browsable, request)
        if browsable.counted_facets and not request.filters and request.search is None:
            query = self._from_index(session, principal, browsable, TOTAL)
            return int(sum(row.n for row in session.execute(query)))
        one_tag = self._single_tag(browsable, request)
        if one_tag is not None:
            # The rows with one tag are what that tag's counters count (a row counts once per tag it has).
            facet, tag = one_tag
            query = self._from_index(session, principal, browsable, facet).where(BrowseCount.value == tag)
            return int(sum(row.n for row in session.execute(query)))
        query, _rank = self._query(session, principal, browsable, request)
        return count(session, query)

    def _single_tag(self, browsable: Browsable, request: BrowseRequest) -> tuple[str, str] | None:
        """(the counted tag facet, the tag) when the request asks for the rows with one tag, and nothing
        else; their total is then a sum of counters."""
        facet = next((f.name for f in browsable.counted_facets if f.attribute is None), None)
        if facet is None or request.search is not None or list(request.filters) != [facet]:
            return None
        value = request.filters[facet]
        tags = {*value.any_of, *value.all_of} if isinstance(value, TagFilter) else set()
        if len(tags) != 1 or not _storable(list(tags)):
            return None
        return facet, tags.pop()

    def facets(
        self,
        principal: Principal,
        browsable: Browsable,
        request: BrowseRequest,
        names: Sequence[str] | None = None,
        limit: int = DEFAULT_FACET_VALUES,
    ) -> list[FacetResult]:
        """Counts of the top ``limit`` values of each facet; a facet past its time budget is marked."""
        self._check(browsable, request)
        if not 1 <= limit <= MAX_FACET_VALUES:
            raise _invalid(f"facet limit must be between 1 and {MAX_FACET_VALUES}", "facets.limit")
        wanted = list(names) if names is not None else list(browsable.facets)
        for name in wanted:
            if name not in browsable.facets:
                raise _invalid(f"{browsable.name} has no facet {name!r}", "facets")
        results = []
        for name in wanted:
            with self.db.read() as session:
                try:
                    with self._budget(session):
                        results.append(self._facet(session, principal, browsable, request, name, limit))
                except _BudgetExceeded:
                    results.append(FacetResult(name, [], timed_out=True))
        return results

    def _facet(
        self,
        session: Session,
        principal: Principal,
        browsable: Browsable,
        request: BrowseRequest,
        name: str,
        limit: int,
    ) -> FacetResult:
        facet = browsable.facets[name]
        if facet.counted and self._indexed(browsable, request, name):
            query = self._from_index(session, principal, browsable, name).having(
                func.sum(BrowseCount.count) > 0
            )
        else:
            base, _rank = self._query(session, principal, browsable, request, skip=name)
            ids = base.with_only_columns(browsable.column("id")).order_by(None)
            if facet.attribute is None:
                query = (
                    select(EntityTag.tag.label("value"), func.count().label("n"))
                    .where(EntityTag.source == browsable.name, EntityTag.entity_id.in_(ids))
                    .group_by(EntityTag.tag)
                )
            else:
                subquery = (
                    base.with_only_columns(browsable.column(facet.attribute).label("value"))
                    .order_by(None)
                    .subquery()
                )
                query = select(subquery.c.value, func.count().label("n")).group_by(subquery.c.value)
        rows = session.execute(query.order_by(text("n DESC"), text("value")).limit(limit + 1)).all()
        values = [FacetValue(str(row.value), int(row.n)) for row in rows[:limit]]
        return FacetResult(name, values, truncated=len(rows) > limit)

    @contextmanager
    def _budget(self, session: Session) -> Iterator[None]:
        """Abort the facet's statements once its time budget is spent (statement_timeout on PostgreSQL,
        a progress handler on SQLite)."""
        connection = session.connection()
        if connection.dialect.name == "postgresql":
            # At least 1 ms: 0 would mean no timeout at all.
            milliseconds = max(1, math.ceil(self.facet_budget_seconds * 1000))
            session.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))
            try:
                yield
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) == "57014":  # query_canceled
                    raise _BudgetExceeded from None
                raise
            return
        raw = connection.connection.driver_connection
        assert raw is not None
        deadline = time.monotonic() + self.facet_budget_seconds
        raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            yield
        except OperationalError as exc:
            if "interrupted" in str(exc):
                raise _BudgetExceeded from None
            raise
        finally:
            raw.set_progress_handler(None, 0)


class _BudgetExceeded(Exception):
    pass
