"""The browse service: one implementation of paging, counting, faceting and search for every browsable.

Every query it builds starts from the browsable's access predicate, so items, totals, facet counts and
search hits always agree and never include a row the caller cannot read. Facets are disjunctive: a field's
counts ignore that field's own filter. Unfiltered totals and counted facets are read from the
``browse_counts`` index (see :mod:`.indexes`), and a non-administrator's unfiltered tags facet from the
counters by access scope (:mod:`.scopes`); the total and facets of a request that requires one tag and
otherwise filters only on buckets, tier, type or status from that tag's counters (``browse_tag_counts``);
everything else is counted live, within a time budget. A page, and a total or facet those counters cannot
give, that requires one tag reads that tag's postings in ``entity_tags`` (which carry the rows' sort keys,
access columns and facet values) instead of probing the rows. On PostgreSQL a search asks the
GIN index for the caller's access scopes beside the words, and relevance ranks title matches first (a
tier of their own, found through the title's index) so a first page rarely visits the other matches.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Double,
    Integer,
    cast,
    column,
    func,
    literal,
    literal_column,
    select,
    table,
    text,
    union_all,
)
from sqlalchemy.dialects.postgresql import TSQUERY
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, aliased

from concord_core.auth.policy import readable_filter, readable_workspace_filter
from concord_core.auth.principal import Principal
from concord_core.browse.connection import (
    AnySelect,
    Ordering,
    Page,
    PagePlan,
    Part,
    assemble_page,
    page_parameters,
    paginate_parts,
    plan_page,
    read_page,
)
from concord_core.browse.indexes import BUCKET, INDEXED, POSTINGS, ROLLED_UP, TAG_COUNTED, TOTAL
from concord_core.browse.scopes import readable_scopes, scope_sum, search_scopes, title_search_vector
from concord_core.browse.source import Browsable, FilterKind
from concord_core.db.async_reads import AsyncReads
from concord_core.db.engine import Database
from concord_core.db.models import POSTING_SORTS, BrowseCount, BrowseScopeCount, BrowseTagCount, EntityTag
from concord_core.operators.errors import ErrorCode, OperatorError

DEFAULT_FACET_VALUES = 20
MAX_FACET_VALUES = 100
MAX_FILTER_VALUES = 100
RELEVANCE = "relevance"
#: Statements of pages, totals and facets kept, by principal and request (see BrowseService._memoized):
#: about 40 KiB each (measured, with what SQLAlchemy's compiled cache keeps for them), 20 MiB in all.
STATEMENT_CACHE_SIZE = 512
#: Access predicates that depend on nothing but the principal's own fields: a statement built with one
#: for a principal serves every later request by an equal principal.
PRINCIPAL_ONLY_ACCESS = (readable_filter, readable_workspace_filter)

T = TypeVar("T")
#: Reads a page, given a session and the ``after`` and ``before`` cursors (see BrowseService.page).
PageReader = Callable[[Session, str | None, str | None], Page[Any]]


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


def _tsquery_of(lexemes: Sequence[str]) -> str:
    """A tsquery matching any of ``lexemes``, taken as they are (quoted, not parsed)."""
    return " | ".join("'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'" for lexeme in lexemes)


def _search_terms(text_query: str) -> list[str]:
    return re.findall(r"\w+", text_query.lower())[:32]


@dataclass(frozen=True)
class _TagRequest:
    """A request that requires tags, in terms of tag postings: the tags every row must have (the first
    drives), and the other filters as conditions on posting columns."""

    tags: list[str]
    equals: list[tuple[str, list[str]]]  # (posting column, the values allowed)
    ranges: list[tuple[str, RangeFilter]]  # (posting column, the range allowed)


def _tag_request(browsable: Browsable, request: BrowseRequest, skip: str | None) -> _TagRequest | None:
    """``request`` (leaving out the filter named ``skip``) as a :class:`_TagRequest`, or None if it does
    not require a tag, needs any of several (a row would have a posting for each), searches, or filters on
    something postings do not carry."""
    attributes = POSTINGS.get(browsable.name)
    if attributes is None or request.search is not None:
        return None
    column_of = {attribute: name for name, attribute in attributes.items() if attribute is not None}
    found = _TagRequest([], [], [])
    for name, value in request.filters.items():
        if name == skip:
            continue
        spec = browsable.filters[name]
        if spec.kind is FilterKind.TAGS:
            assert isinstance(value, TagFilter)
            required = [*value.any_of, *value.all_of]
            if len(value.any_of) > 1 or not required or any(_storable([tag]) != [tag] for tag in required):
                return None
            found.tags.extend(dict.fromkeys(required))
            continue
        posting_column = column_of.get(spec.attribute or "")
        if posting_column is None:
            return None
        if spec.kind is FilterKind.RANGE:
            assert isinstance(value, RangeFilter)
            found.ranges.append((posting_column, value))
        else:
            assert not isinstance(value, TagFilter | RangeFilter)
            found.equals.append((posting_column, _storable(value)))
    return found if found.tags else None


@dataclass
class _Counters:
    """Which browse_counts rows count a request's rows: those of ``facet`` with one of ``values`` (None:
    any value), in the buckets ``conditions`` allow (and the access predicate, always)."""

    facet: str
    values: list[str] | None
    conditions: list[ColumnElement[bool]]


@dataclass(frozen=True)
class _PlanReader:
    """Reads the pages of one :class:`PagePlan` (one statement); :meth:`BrowseService.page_async` can
    read them from the event loop instead."""

    plan: PagePlan

    def __call__(self, session: Session, after: str | None, before: str | None) -> Page[Any]:
        return read_page(session, self.plan, after, before)


def _memoizable(browsable: Browsable) -> bool:
    """Whether the statements of ``browsable``'s questions can be kept: its access predicate reads nothing
    but the principal (a lens's own may read more)."""
    return browsable.access in PRINCIPAL_ONLY_ACCESS


def _frozen(value: FilterValue) -> Hashable:
    if isinstance(value, TagFilter):
        return ("tags", tuple(value.any_of), tuple(value.all_of))
    if isinstance(value, RangeFilter):
        return value
    return tuple(value)


class BrowseService:
    def __init__(self, db: Database, facet_budget_seconds: float = 1.0) -> None:
        self.db = db
        self.facet_budget_seconds = facet_budget_seconds
        self._statements: OrderedDict[Hashable, Any] = OrderedDict()
        self._statements_lock = threading.Lock()

    # -- statements built once ------------------------------------------------------------------------

    def _statement_key(
        self, kind: str, principal: Principal, browsable: Browsable, request: BrowseRequest, *more: Hashable
    ) -> Hashable | None:
        """What the ``kind`` statements for this question depend on, or None if that cannot be told: its
        browsable's access predicate may read more than the principal (a lens's own)."""
        if not _memoizable(browsable):
            return None
        who = (principal.user_id, principal.is_admin, tuple(sorted(principal.roles.items())))
        asked = (
            tuple((name, _frozen(value)) for name, value in request.filters.items()),
            request.search,
            request.sort,
            request.descending,
        )
        return (kind, browsable.name, who, asked, *more)

    def _memoized(self, key: Hashable | None, build: Callable[[], T]) -> T:
        """``build()``, or what it built before for ``key`` (None: always build). Building a page's,
        total's or facets' statements costs more CPU than running them (several ms for three facets,
        against a fraction of one to run them from their counters), and a client asks the same question
        page after page. SQLAlchemy statements are immutable, so one may run in several threads at once."""
        if key is None:
            return build()
        with self._statements_lock:
            found = self._statements.get(key)
            if found is not None:
                self._statements.move_to_end(key)
                return found
        built = build()
        with self._statements_lock:
            self._statements[key] = built
            if len(self._statements) > STATEMENT_CACHE_SIZE:
                self._statements.popitem(last=False)
        return built

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
        self, principal: Principal, browsable: Browsable, query: AnySelect, terms: list[str]
    ) -> tuple[AnySelect, ColumnElement[Any]]:
        """Restrict ``query`` to rows matching every term; returns it with a rank (higher is better)."""
        assert browsable.search is not None
        if self.db.is_postgres:
            vector: ColumnElement[Any] = literal_column(
                f"{browsable.table_name}.{browsable.search.postgres_column}"
            )
            tsquery = func.to_tsquery(browsable.search.postgres_config, " & ".join(f"{t}:*" for t in terms))
            matching: ColumnElement[Any] = tsquery
            scopes = search_scopes(principal, browsable) if browsable.search.scoped else None
            if scopes is not None:
                # ... and one of the caller's access scopes, so the GIN index leaves out the rows the
                # access predicate (still applied: query already holds it) would drop after reading them.
                matching = tsquery.op("&&")(cast(literal(_tsquery_of(scopes)), TSQUERY))
            # As double precision: ts_rank_cd's real comes back rounded to the nearest short decimal
            # (1.4 for 1.39999997...), which the real value is then below, so a cursor repeated its row.
            # Ranked by the words alone: the scope lexemes have no positions and are not in tsquery.
            # Both conditions: words that are all stop words make an empty tsquery, which matches nothing,
            # but "empty && scopes" is the scopes alone (GIN reads the shared lexemes once).
            searched = query.where(vector.op("@@")(tsquery), vector.op("@@")(matching))
            return searched, cast(func.ts_rank_cd(vector, tsquery), Double)
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

    def _tiers(self, principal: Principal, browsable: Browsable, request: BrowseRequest) -> list[Part] | None:
        """PostgreSQL, a searchable with a title: relevance as (tier, rank, id), descending, where tier 1
        holds the rows whose title matches every search word (the weight-A lexemes of the vector) and tier
        0 the other matches; the rank is ts_rank_cd within a tier. Tier 1 is found through the GIN index
        on the title's vector and its access scopes (migration 0008), so a page it fills reads only rows
        whose title matches, never every match; tier 0 is read only for the pages that reach it."""
        search = browsable.search
        terms = _search_terms(request.search or "")
        if not self.db.is_postgres or search is None or search.postgres_title is None or not terms:
            return None
        model = browsable.model
        base: AnySelect = select(model).where(
            browsable.access(principal, model), *self._conditions(browsable, request)
        )
        vector: ColumnElement[Any] = literal_column(f"{browsable.table_name}.{search.postgres_column}")
        words = func.to_tsquery(search.postgres_config, " & ".join(f"{t}:*" for t in terms))
        in_title = func.to_tsquery(search.postgres_config, " & ".join(f"{t}:*A" for t in terms))
        matching: ColumnElement[Any] = words
        scopes = search_scopes(principal, browsable) if search.scoped else None
        if scopes is not None:
            matching = words.op("&&")(cast(literal(_tsquery_of(scopes)), TSQUERY))
        title: ColumnElement[Any] = literal_column(
            title_search_vector(browsable.table_name, search.postgres_title, search.postgres_config)
        )
        rank = cast(func.ts_rank_cd(vector, words), Double)
        model_id = browsable.column("id")
        return [
            # Both conditions each time, as in _search: an empty tsquery && scopes is the scopes alone.
            Part(
                base.where(title.op("@@")(words), title.op("@@")(matching)), (literal(1), rank, model_id), 1
            ),
            Part(
                base.where(vector.op("@@")(words), vector.op("@@")(matching), ~vector.op("@@")(in_title)),
                (literal(0), rank, model_id),
                0,
            ),
        ]

    def _query(
        self,
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
        return self._search(principal, browsable, query, terms)

    def _tag_counts(
        self, principal: Principal, browsable: Browsable, request: BrowseRequest, skip: str | None = None
    ) -> list[ColumnElement[bool]] | None:
        """The conditions on ``browse_tag_counts`` that select the counters of the rows ``request`` matches
        (leaving out the filter named ``skip``): those of the one tag it requires, in the buckets the access
        predicate and the bucket filters allow, with the tier, type and status it allows. None if the
        request does not require exactly one tag, searches, or filters on anything else."""
        found = _tag_request(browsable, request, skip)
        if (
            found is None
            or len(found.tags) != 1
            or found.ranges
            or INDEXED.get(browsable.model) is not browsable
            or any(name not in TAG_COUNTED for name, _values in found.equals)
        ):
            return None
        return [
            BrowseTagCount.source == browsable.name,
            BrowseTagCount.tag == found.tags[0],
            browsable.access(principal, BrowseTagCount),
            *(getattr(BrowseTagCount, name).in_(values) for name, values in found.equals),
        ]

    def _postings(
        self, principal: Principal, browsable: Browsable, request: BrowseRequest, skip: str | None = None
    ) -> list[ColumnElement[bool]] | None:
        """The conditions on ``entity_tags`` that select one posting per row ``request`` matches (leaving out
        the filter named ``skip``): the postings of one tag the request requires, checked against the
        access predicate and every other filter by the columns a posting carries. None if the request
        does not require a tag, needs any of several (a row would have a posting for each), searches, or
        filters on something postings do not carry."""
        found = _tag_request(browsable, request, skip)
        if found is None or browsable.access is not readable_filter:
            return None
        conditions: list[ColumnElement[bool]] = []
        for tag in found.tags[1:]:
            also = aliased(EntityTag)
            conditions.append(
                EntityTag.entity_id.in_(
                    select(also.entity_id).where(also.source == browsable.name, also.tag == tag)
                )
            )
        for name, values in found.equals:
            conditions.append(getattr(EntityTag, name).in_(values))
        for name, within in found.ranges:
            if within.start is not None:
                conditions.append(getattr(EntityTag, name) >= within.start)
            if within.end is not None:
                conditions.append(getattr(EntityTag, name) < within.end)
        return [
            EntityTag.source == browsable.name,
            EntityTag.tag == found.tags[0],
            browsable.access(principal, EntityTag),
            *conditions,
        ]

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
        columns: Sequence[str] | None = None,
    ) -> Page[Any]:
        """A page of the rows the caller may read: the model's entities, or with ``columns`` (attribute
        names of the model; its id is always included) dicts of just those columns by attribute name."""
        after, before = after or None, before or None  # an empty cursor is no cursor
        reader = self._reader(principal, browsable, request, first, after, last, before, columns)
        return reader(session, after, before)

    async def page_async(
        self,
        reads: AsyncReads,
        principal: Principal,
        browsable: Browsable,
        request: BrowseRequest,
        *,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        columns: Sequence[str],
    ) -> Page[Any] | None:
        """:meth:`page` with ``columns``, read on the event loop through ``reads`` (PostgreSQL), when its
        page is one statement built once for the question; None when it is not (a search read in tiers, a
        lens's own access predicate): ask :meth:`page`."""
        if not _memoizable(browsable):
            return None
        after, before = after or None, before or None
        reader = self._reader(principal, browsable, request, first, after, last, before, columns)
        if not isinstance(reader, _PlanReader):
            return None
        plan = reader.plan
        names, rows = await reads.table(plan.statement, page_parameters(plan, after, before))
        return assemble_page(plan, names[: plan.width], rows)

    def _reader(
        self,
        principal: Principal,
        browsable: Browsable,
        request: BrowseRequest,
        first: int | None,
        after: str | None,
        last: int | None,
        before: str | None,
        columns: Sequence[str] | None,
    ) -> PageReader:
        """What reads :meth:`page`'s pages, built once per question (VALIDATION errors for a bad one)."""
        self._check(browsable, request)
        # The cursors are parameters of the statements, so one plan serves every page of a question.
        shown = None if columns is None else tuple(columns)
        paging = (first, last, after is not None, before is not None, shown)
        key = self._statement_key("page", principal, browsable, request, *paging)

        def build() -> PageReader:
            return self._page_reader(
                principal,
                browsable,
                request,
                first=first,
                last=last,
                after=after is not None,
                before=before is not None,
                columns=columns,
            )

        return self._memoized(key, build)

    def _page_reader(
        self,
        principal: Principal,
        browsable: Browsable,
        request: BrowseRequest,
        *,
        first: int | None,
        last: int | None,
        after: bool,
        before: bool,
        columns: Sequence[str] | None,
    ) -> PageReader:
        """What reads the pages :meth:`page` describes (after a cursor if ``after``, before one if
        ``before``), given a session and the cursors: its statements built."""
        selected = None
        if columns is not None:
            selected = [browsable.column(name) for name in dict.fromkeys(["id", *columns])]
        postings = self._postings(principal, browsable, request)
        if postings is not None and (request.sort or "created") in POSTING_SORTS:
            # One tag's postings in sort order, then only the page's rows. Same keys, same cursors.
            sort = request.sort or "created"
            direction = "desc" if request.descending else "asc"
            keys: list[ColumnElement[Any]] = [
                getattr(EntityTag, POSTING_SORTS[sort]),
                EntityTag.__table__.c.entity_id,
            ]
            plan = plan_page(
                select(EntityTag).where(*postings),
                Ordering(f"{sort}:{direction}", keys, request.descending),
                first=first,
                last=last,
                after=after,
                before=before,
                row_columns=selected,
                rows_of=(browsable.model, browsable.column("id")),
            )
            return _PlanReader(plan)
        query, rank = self._query(principal, browsable, request)
        sort = request.sort or (RELEVANCE if rank is not None else "created")
        tiers = self._tiers(principal, browsable, request) if sort == RELEVANCE and rank is not None else None
        if tiers is not None:
            parts = tiers

            def read_parts(session: Session, after: str | None, before: str | None) -> Page[Any]:
                return paginate_parts(
                    session,
                    parts,
                    RELEVANCE,
                    (browsable.model, browsable.column("id")),
                    first=first,
                    after=after,
                    last=last,
                    before=before,
                    row_columns=selected,
                )

            return read_parts
        if sort == RELEVANCE:
            # A search with no words matches nothing; its (empty) pages still take relevance cursors.
            key = rank if rank is not None else cast(literal(0), Double)
            ordering = Ordering(RELEVANCE, (key, browsable.column("id")), descending=True)
        else:
            key = browsable.column(browsable.sorts[sort])
            direction = "desc" if request.descending else "asc"
            ordering = Ordering(f"{sort}:{direction}", (key, browsable.column("id")), request.descending)
        plan = plan_page(
            query, ordering, first=first, last=last, after=after, before=before, row_columns=selected
        )
        return _PlanReader(plan)

    # -- counting from browse_counts ------------------------------------------------------------------

    def _counters(
        self, browsable: Browsable, request: BrowseRequest, skip: str | None = None
    ) -> _Counters | None:
        """How to count the rows ``request`` matches (leaving out the filter named ``skip``) from
        browse_counts, or None if they must be counted live.

        The counters partition the rows by access bucket (visibility, workspace, owner), so a filter on a
        bucket column is a condition on the counters themselves. Besides those, one filter on a counted
        facet is allowed if the rows it matches are counted once each: any values of a single-valued field
        (a row has one tier), or one tag (a row counts once per tag it has, so two tags would count a row
        with both twice). No search: matches are not counted ahead."""
        if request.search is not None or INDEXED.get(browsable.model) is not browsable:
            return None
        counters = _Counters(TOTAL, [TOTAL], [])
        for name, value in request.filters.items():
            if name == skip:
                continue
            spec = browsable.filters[name]
            if spec.kind is FilterKind.EQUALS and spec.attribute in BUCKET:
                assert not isinstance(value, TagFilter | RangeFilter)
                counters.conditions.append(getattr(BrowseCount, spec.attribute).in_(_storable(value)))
                continue
            facet = next(
                (f for f in browsable.counted_facets if f.attribute == spec.attribute),
                None,
            )
            if facet is None or counters.facet != TOTAL or spec.kind is FilterKind.RANGE:
                return None
            if spec.kind is FilterKind.TAGS:
                assert isinstance(value, TagFilter)
                tags = {*value.any_of, *value.all_of}
                if len(tags) != 1 or (value.any_of and set(value.any_of) != tags):
                    return None
                values = _storable(list(tags))
            else:
                assert not isinstance(value, TagFilter | RangeFilter)
                values = _storable(value)
            counters = _Counters(facet.name, values, counters.conditions)
        return counters

    def _counted(
        self, principal: Principal, browsable: Browsable, counters: _Counters
    ) -> list[ColumnElement[bool]]:
        """The browse_counts rows ``counters`` names, scoped by the access predicate like every row."""
        conditions = [
            BrowseCount.source == browsable.name,
            BrowseCount.facet == counters.facet,
            browsable.access(principal, BrowseCount),
            *counters.conditions,
        ]
        if counters.values is not None:
            conditions.append(BrowseCount.value.in_(counters.values))
        return conditions

    def _from_counters(
        self, principal: Principal, browsable: Browsable, counters: _Counters, group: Any
    ) -> AnySelect:
        """Sums of the counters ``counters`` names by ``group``: a column of BrowseCount (its value, or a
        bucket column)."""
        query: AnySelect = (
            select(group.label("value"), func.sum(BrowseCount.count).label("n"))
            .where(*self._counted(principal, browsable, counters))
            .group_by(group)
        )
        return query

    def total(
        self, session: Session, principal: Principal, browsable: Browsable, request: BrowseRequest
    ) -> int:
        self._check(browsable, request)
        statement = self._memoized(
            self._statement_key("total", principal, browsable, request),
            lambda: self._total_statement(principal, browsable, request),
        )
        return int(session.scalar(statement) or 0)

    def _total_statement(self, principal: Principal, browsable: Browsable, request: BrowseRequest) -> Any:
        counters = self._counters(browsable, request)
        if counters is not None:
            return select(func.sum(BrowseCount.count)).where(*self._counted(principal, browsable, counters))
        tag_counts = self._tag_counts(principal, browsable, request)
        if tag_counts is not None:
            return select(func.sum(BrowseTagCount.count)).where(*tag_counts)
        postings = self._postings(principal, browsable, request)
        if postings is not None:
            return select(func.count()).select_from(EntityTag).where(*postings)
        query, _rank = self._query(principal, browsable, request)
        return select(func.count()).select_from(query.order_by(None).subquery())

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
        plans, top_values = self._memoized(
            self._statement_key("facets", principal, browsable, request, tuple(wanted), limit),
            lambda: self._facet_statements(principal, browsable, request, wanted, limit),
        )
        found: dict[str, FacetResult] = {}
        from_counters = [name for name in wanted if not plans[name][1]]
        if top_values is not None:
            # Counters are a bounded read (values times buckets): all such facets in one statement.
            with self.db.read(transaction=False) as session:  # no budget: no SET LOCAL
                rows = session.execute(top_values).all()
            for name in from_counters:
                counted = sorted((row for row in rows if row.facet == name), key=lambda row: row.place)
                found[name] = self._result(name, counted, limit)
        for name in wanted:
            query, live = plans[name]
            if not live:
                continue
            with self.db.read() as session:  # live counting has a budget, one transaction per facet
                try:
                    with self._budget(session):
                        ordered = query.order_by(text("n DESC"), text("value")).limit(limit + 1)
                        live_rows = session.execute(ordered).all()
                except _BudgetExceeded:
                    found[name] = FacetResult(name, [], timed_out=True)
                    continue
            found[name] = self._result(name, live_rows, limit)
        return [found[name] for name in wanted]

    def _facet_statements(
        self, principal: Principal, browsable: Browsable, request: BrowseRequest, names: list[str], limit: int
    ) -> tuple[dict[str, tuple[AnySelect, bool]], Any]:
        """Each facet's query and whether it counts live, and one statement for the top values of all
        those read from counters (None if there are none)."""
        plans = {name: self._facet_query(principal, browsable, request, name) for name in names}
        from_counters = [name for name in names if not plans[name][1]]
        return plans, self._top_values(plans, from_counters, limit) if from_counters else None

    @staticmethod
    def _result(name: str, counted: Sequence[Any], limit: int) -> FacetResult:
        values = [FacetValue(str(row.value), int(row.n)) for row in counted[:limit]]
        return FacetResult(name, values, truncated=len(counted) > limit)

    @staticmethod
    def _top_values(plans: dict[str, tuple[AnySelect, bool]], names: list[str], limit: int) -> Any:
        """The top ``limit + 1`` values of each facet in ``names``, as (facet, value, n, place) rows."""
        parts = []
        for name in names:
            top = plans[name][0].order_by(text("n DESC"), text("value")).limit(limit + 1).subquery()
            place = func.row_number().over(order_by=(top.c.n.desc(), top.c.value))
            parts.append(select(literal(name).label("facet"), top.c.value, top.c.n, place.label("place")))
        return union_all(*parts)

    def _facet_query(
        self, principal: Principal, browsable: Browsable, request: BrowseRequest, name: str
    ) -> tuple[AnySelect, bool]:
        """The query counting facet ``name`` (value, n), and whether it counts rows live."""
        facet = browsable.facets[name]
        counters = self._counters(browsable, request, skip=name)
        query: AnySelect | None = None
        if counters is not None and facet.attribute in BUCKET:
            # A bucket column: the counters of the matching rows, by that column.
            group = getattr(BrowseCount, facet.attribute)
            query = self._from_counters(principal, browsable, counters, group)
        elif counters is not None and counters.facet == TOTAL and facet.counted:
            scopes = readable_scopes(principal, browsable)
            if not counters.conditions and name in ROLLED_UP.get(browsable.name, ()) and scopes is not None:
                # Nothing filters the rows but the access predicate: the tag counters of the scopes the
                # caller reads (a few per tag), rather than those of every bucket.
                n = scope_sum(scopes)
                by_scope: AnySelect = (
                    select(BrowseScopeCount.value.label("value"), n.label("n"))
                    .where(
                        BrowseScopeCount.source == browsable.name,
                        BrowseScopeCount.facet == name,
                        BrowseScopeCount.scope.in_(list(scopes)),
                    )
                    .group_by(BrowseScopeCount.value)
                    .having(n > 0)
                )
                return by_scope, False
            # Nothing filters the rows but their buckets: the facet's own counters, by value.
            query = self._from_counters(
                principal, browsable, _Counters(facet.name, None, counters.conditions), BrowseCount.value
            )
        if query is not None:
            return query.having(func.sum(BrowseCount.count) > 0), False
        carried = {a: c for c, a in POSTINGS.get(browsable.name, {}).items() if a is not None}
        posting_column = carried.get(facet.attribute or "")
        tag_counts = self._tag_counts(principal, browsable, request, skip=name)
        if tag_counts is not None and posting_column in TAG_COUNTED:
            # One tag's postings counted ahead by this facet's column (and the others filtered on).
            group = getattr(BrowseTagCount, posting_column)
            n = func.sum(BrowseTagCount.count)
            by_tag: AnySelect = (
                select(group.label("value"), n.label("n")).where(*tag_counts).group_by(group).having(n > 0)
            )
            return by_tag, False
        postings = self._postings(principal, browsable, request, skip=name)
        if postings is not None and posting_column is not None:
            # Counted over one tag's postings, which carry the facet's value: no row is visited.
            value = getattr(EntityTag, posting_column)
            counted = select(value.label("value"), func.count().label("n")).where(*postings).group_by(value)
            return counted, True
        base, _rank = self._query(principal, browsable, request, skip=name)
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
        return query, True

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
