"""Keyset pagination over any SQLAlchemy query: Relay's first/after and last/before.

Pages are found by comparing sort keys, never by OFFSET, so a deep page costs what the first page costs,
and a row inserted meanwhile never shifts what the next page holds. The last sort key must be unique.
Sort keys may be columns or expressions (a search rank); their values are selected beside each row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Row, Select, bindparam, literal, select, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from concord_core.browse.cursor import decode_cursor, encode_cursor
from concord_core.operators.errors import ErrorCode, OperatorError

T = TypeVar("T")
#: A SELECT of any columns (SQLAlchemy 2.1 types a Select by the tuple of what it returns).
AnySelect = Select[*tuple[Any, ...]]
MAX_PAGE = 100
DEFAULT_PAGE = 20


@dataclass(frozen=True)
class Ordering:
    """A named sort order: keys in one direction; the last key is a unique tie-breaker."""

    name: str
    columns: Sequence[ColumnElement[Any]]
    descending: bool = True


@dataclass
class Page(Generic[T]):
    items: list[T]
    cursors: list[str]
    has_next_page: bool
    has_previous_page: bool


def _past(columns: Sequence[Any], bounds: Sequence[Any], descending: bool) -> ColumnElement[bool]:
    """Rows strictly past ``bounds`` in the sort direction: a row-value comparison, which both databases
    turn into a range on an index over the sort keys (the same condition spelled out with OR is only a
    filter, so a deep page would read every row before it)."""
    keys, bound = tuple_(*columns), tuple_(*bounds)
    return keys < bound if descending else keys > bound


def _after(columns: Sequence[Any], values: Sequence[Any], descending: bool) -> ColumnElement[bool]:
    """:func:`_past` some values."""
    bounds = [literal(value, column.type) for column, value in zip(columns, values, strict=True)]
    return _past(columns, bounds, descending)


def _cursor_bounds(side: str, columns: Sequence[Any]) -> list[Any]:
    """Parameters standing for a cursor's sort keys (``after`` or ``before``), given when a plan is read."""
    return [bindparam(f"cursor_{side}_{n}", type_=column.type) for n, column in enumerate(columns)]


def _kind(column: ColumnElement[Any]) -> type:
    """The Python type of a sort key's values: the column's (its underlying type's, for a decorated one
    such as UtcDateTime), or float for a computed rank."""
    sql_type = column.type
    if isinstance(sql_type, TypeDecorator):
        sql_type = sql_type.impl_instance
    try:
        kind: type = sql_type.python_type
    except NotImplementedError:
        return float
    return kind


def page_size(first: int | None, last: int | None) -> tuple[int, bool]:
    """How many rows to fetch and whether we page backwards; VALIDATION errors for bad arguments."""
    if first is not None and last is not None:
        raise OperatorError.single(ErrorCode.VALIDATION, "pass first or last, not both", "first")
    size = last if last is not None else first if first is not None else DEFAULT_PAGE
    if not 0 <= size <= MAX_PAGE:
        raise OperatorError.single(
            ErrorCode.VALIDATION,
            f"first/last must be between 0 and {MAX_PAGE}",
            "last" if last is not None else "first",
        )
    return size, last is not None


@dataclass(frozen=True)
class PagePlan:
    """A page's statement and how to read its rows (made by :func:`plan_page`, run by :func:`read_page`).
    The cursors are parameters of the statement, given when it is read, so one plan serves the first page
    and every page after it (statements are immutable: a caller may keep a plan and read it in any
    thread)."""

    statement: AnySelect
    ordering: Ordering
    kinds: list[type]  # of the ordering's keys, for decoding cursors
    width: int  # the item's columns in each row; its sort keys follow
    size: int
    backwards: bool
    plain: bool  # items are dicts of columns, not entities
    after: bool  # it takes an ``after`` cursor
    before: bool  # it takes a ``before`` cursor


def plan_page(
    query: AnySelect,
    ordering: Ordering,
    *,
    first: int | None = None,
    last: int | None = None,
    after: bool = False,
    before: bool = False,
    row_columns: Sequence[ColumnElement[Any]] | None = None,
    rows_of: tuple[type, ColumnElement[Any]] | None = None,
) -> PagePlan:
    """One page of ``query`` (a select of one ORM entity) in ``ordering``, whose last key is the entity's
    primary key, after (before) a cursor if ``after`` (``before``); VALIDATION errors for bad page sizes.
    The items are the entities; with ``row_columns``, dicts of those columns by name instead (no ORM objects
    to build, and only the columns the caller will read are fetched and decoded).

    With ``rows_of`` (an entity and its primary key), ``query`` only finds the page's keys, from another
    table whose last key holds that entity's primary key (tag postings): the items are then rows of that
    entity (or of ``row_columns``, which are its columns)."""
    size, backwards = page_size(first, last)
    columns = list(ordering.columns)
    descending = ordering.descending
    if after:
        query = query.where(_past(columns, _cursor_bounds("after", columns), descending))
    if before:
        query = query.where(_past(columns, _cursor_bounds("before", columns), not descending))
    reverse = descending != backwards  # SQL order: backwards pages are read in reverse, then flipped
    # The page's keys first, from the sort index alone where the database can (the access predicate and
    # filters checked on its entries); then only those rows are read whole.
    labels = [column.label(f"k{n}") for n, column in enumerate(columns)]
    keys = (
        query.with_only_columns(*labels)
        .order_by(*(label.desc() if reverse else label.asc() for label in labels))
        .limit(size + 1)
        .subquery("page_keys")
    )
    key_columns = [keys.c[f"k{n}"] for n in range(len(columns))]
    entity, row_id = rows_of if rows_of is not None else (query.column_descriptions[0]["entity"], columns[-1])
    wanted = list(row_columns) if row_columns is not None else [entity]
    statement = (
        select(*wanted, *key_columns)
        .join(keys, row_id == key_columns[-1])
        .order_by(*(key.desc() if reverse else key.asc() for key in key_columns))
    )
    return PagePlan(
        statement,
        ordering,
        [_kind(column) for column in columns],
        len(wanted),
        size,
        backwards,
        plain=row_columns is not None,
        after=after,
        before=before,
    )


def read_page(
    session: Session, plan: PagePlan, after: str | None = None, before: str | None = None
) -> Page[Any]:
    """Run a :class:`PagePlan` with its cursors (VALIDATION errors for malformed or forged ones)."""
    parameters = page_parameters(plan, after, before)
    if plan.plain:
        names, rows = _plain_rows(session, plan.statement, plan.width, parameters)
        return assemble_page(plan, names, rows)
    return assemble_page(plan, [], list(session.execute(plan.statement, parameters).all()))


def page_parameters(plan: PagePlan, after: str | None, before: str | None) -> dict[str, Any]:
    """The parameters of ``plan``'s statement: the sort keys in its cursors (VALIDATION errors for
    malformed or forged ones)."""
    if plan.after != (after is not None) or plan.before != (before is not None):
        raise ValueError("the cursors given are not the ones the plan was made for")
    parameters: dict[str, Any] = {}
    for side, cursor in (("after", after), ("before", before)):
        if cursor is not None:
            values = decode_cursor(cursor, plan.ordering.name, plan.kinds, side)
            parameters.update({f"cursor_{side}_{n}": value for n, value in enumerate(values)})
    return parameters


def assemble_page(plan: PagePlan, names: Sequence[str], rows: Sequence[Sequence[Any]]) -> Page[Any]:
    """The page in the rows of ``plan``'s statement: with ``names`` (of a plain plan's item columns), the
    items are dicts of them, else each row's first column."""
    width = plan.width
    more = len(rows) > plan.size
    rows = list(rows[: plan.size])
    if plan.backwards:
        rows.reverse()
    # zip stops at the names: the sort keys after them are not the item's
    items = [dict(zip(names, row, strict=False)) for row in rows] if plan.plain else [row[0] for row in rows]
    return Page(
        items=items,
        cursors=[encode_cursor(plan.ordering.name, tuple(row[width:])) for row in rows],
        has_next_page=more if not plan.backwards else plan.before,
        has_previous_page=more if plan.backwards else plan.after,
    )


def _plain_rows(
    session: Session, statement: AnySelect, width: int, parameters: dict[str, Any]
) -> tuple[list[str], list[Row[Any]]]:
    """The names of the first ``width`` columns of ``statement`` and its rows, read as plain rows: through
    the session's connection, which skips the ORM's result machinery (there are no entities to load)."""
    result = session.connection().execute(statement, parameters)
    return list(result.keys())[:width], list(result.all())


@dataclass(frozen=True)
class Part:
    """One part of an ordering read in parts: the rows of ``query`` whose first sort key is the constant
    ``lead`` (``columns`` are the ordering's keys for these rows, ``lead`` first)."""

    query: AnySelect
    columns: Sequence[ColumnElement[Any]]
    lead: int


def paginate_parts(
    session: Session,
    parts: Sequence[Part],
    name: str,
    rows_of: tuple[type, ColumnElement[Any]],
    *,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
    row_columns: Sequence[ColumnElement[Any]] | None = None,
) -> Page[Any]:
    """One page of rows ordered descending by keys whose first is a small integer that tells disjoint
    ``parts`` apart (a search's tiers). Each part is read, in order, only while the page still needs
    rows, so a page the first part fills never reads the others; a part the cursor is past is skipped.
    Then the page's rows are read by ``rows_of`` (an entity and its primary key), whole or as
    ``row_columns``."""
    size, backwards = page_size(first, last)
    kinds = [int, *(_kind(column) for column in parts[0].columns[1:])]
    bounds = [
        (decode_cursor(cursor, name, kinds, field), ascending)
        for cursor, field, ascending in ((after, "after", False), (before, "before", True))
        if cursor
    ]
    reverse = not backwards  # descending order, unless paging backwards
    found: list[tuple[Any, ...]] = []
    for part in parts if reverse else list(reversed(parts)):
        wanted = size + 1 - len(found)
        if wanted <= 0:
            break
        # A part whose tier lies beyond a cursor has no row on this page.
        if any(part.lead < values[0] if ascending else part.lead > values[0] for values, ascending in bounds):
            continue
        query = part.query
        for values, ascending in bounds:
            query = query.where(_after(part.columns, values, not ascending))
        labels = [column.label(f"k{n}") for n, column in enumerate(part.columns)]
        keys = (
            query.with_only_columns(*labels)
            .order_by(*(label.desc() if reverse else label.asc() for label in labels))
            .limit(wanted)
        )
        found += [tuple(row) for row in session.execute(keys).all()]
    more = len(found) > size
    found = found[:size]
    if backwards:
        found.reverse()
    entity, row_id = rows_of
    wanted_columns = list(row_columns) if row_columns is not None else [entity]
    by_id: dict[Any, Any] = {}
    if found:
        rows = select(*wanted_columns, row_id.label("page_row_id")).where(row_id.in_([k[-1] for k in found]))
        if row_columns is not None:
            names, fetched = _plain_rows(session, rows, len(wanted_columns), {})
            by_id = {row[-1]: dict(zip(names, row, strict=False)) for row in fetched}
        else:
            by_id = {row[-1]: row[0] for row in session.execute(rows).all()}
    # The parts and the rows are separate statements: a row deleted in between is left out, and one an edit
    # moved from one part to the next (read by both) is shown once, rather than failing the page.
    kept: dict[Any, tuple[Any, ...]] = {}
    for key in found:
        if key[-1] in by_id:
            kept.setdefault(key[-1], key)
    found = list(kept.values())
    return Page(
        items=[by_id[key[-1]] for key in found],
        cursors=[encode_cursor(name, key) for key in found],
        has_next_page=more if not backwards else bool(before),
        has_previous_page=more if backwards else bool(after),
    )
