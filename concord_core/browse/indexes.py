"""Derived browse indexes, kept in the same transaction as the rows they describe.

* ``entity_tags``: one row per (browsable, row, tag), so tag filters and tag facets use an index. Each
  of these postings carries its row's sort keys, access columns and single-valued facet values
  (:func:`posting_attributes`), so a page or a facet filtered by one tag reads postings alone; a change
  to any of them rewrites the row's postings in the same flush.
* ``browse_counts``: per browsable, per access bucket (visibility, workspace, owner), how many rows have
  each value of each counted facet (facet ``""``: the rows themselves). Unfiltered totals and facets then
  sum a few buckets, scoped by the same policy filter as everything else, instead of scanning every row.
* ``browse_scope_counts``: the tags facet's counters summed by access scope (:mod:`.scopes`), changed by
  the same deltas.
* ``browse_tag_counts``: each tag's postings counted by access bucket, tier, type and status, so a total or
  facet of a request that requires one tag sums a few counters too, however many rows carry the tag.

A SQLAlchemy ``before_flush`` hook derives them from the ORM changes of a transaction, so no operator can
forget them; an operator that inserts a row with Core instead of the unit of work (which the hook cannot
see) calls :func:`index_inserted` beside its ``INSERT``. :func:`rebuild_all` recomputes them from the
tables (after bulk loads or as a repair), and :func:`verify_all` checks them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, bindparam, delete, event, func, insert, literal, select, update
from sqlalchemy.orm import Session, UOWTransaction
from sqlalchemy.orm.attributes import get_history

from concord_core.browse.counters import CounterTable
from concord_core.browse.scopes import rebuild_scopes, rolled_up, scope_deltas, upsert_scopes
from concord_core.browse.source import Browsable
from concord_core.browse.sources import KERNEL_BROWSABLES
from concord_core.db.engine import pipelined
from concord_core.db.models import (
    POSTING_FACETS,
    POSTING_SORTS,
    BrowseCount,
    BrowseScopeCount,
    BrowseTagCount,
    EntityTag,
)
from concord_core.db.types import new_id, utcnow

TOTAL = ""
BUCKET = ("visibility", "workspace_id", "owner_id")
INDEXED: dict[type, Browsable] = {b.model: b for b in KERNEL_BROWSABLES if b.tagged or b.counted_facets}
ROLLED_UP = {b.name: rolled_up(b) for b in INDEXED.values()}  # source -> facets also kept by scope

Key = tuple[str, str, str, str, str, str]  # source, facet, value, visibility, workspace, owner
#: browse_tag_counts: what its counters tell apart besides the source and the tag (posting columns).
TAG_COUNTED = (*BUCKET, *POSTING_FACETS)
TagKey = tuple[str, ...]  # source, tag, then the TAG_COUNTED columns' values


def posting_attributes(browsable: Browsable) -> dict[str, str | None]:
    """What each posting column of ``browsable``'s tags holds: the model attribute it copies, or None (the
    browsable has no such facet; the column stays NULL). Tagged browsables sort by created, updated and
    title."""
    columns: dict[str, str | None] = {column: browsable.sorts[sort] for sort, column in POSTING_SORTS.items()}
    columns.update({name: name for name in BUCKET})
    for name in POSTING_FACETS:
        facet = browsable.facets.get(name)
        columns[name] = facet.attribute if facet is not None else None
    return columns


POSTINGS = {b.name: posting_attributes(b) for b in INDEXED.values() if b.tagged}
#: One tag change of one row: source, id, tags removed, tags added, the row's posting values now (empty
#: for a deleted row), and whether the postings it keeps must be rewritten with them.
TagChange = tuple[str, str, set[str], set[str], dict[str, Any], bool]


def _value(obj: Any, attribute: str, *, old: bool) -> Any:
    if not old:
        return getattr(obj, attribute)
    history = get_history(obj, attribute)
    if history.deleted:
        return history.deleted[0]
    return history.unchanged[0] if history.unchanged else getattr(obj, attribute)


def _keys(browsable: Browsable, obj: Any, *, old: bool) -> tuple[list[Key], list[TagKey], set[str]]:
    """The counter keys and per-tag counter keys one row contributes to, and its tags."""
    visibility, workspace_id, owner_id = (str(_value(obj, name, old=old)) for name in BUCKET)
    bucket = (visibility, workspace_id, owner_id)
    keys: list[Key] = [(browsable.name, TOTAL, TOTAL, *bucket)]
    tags = set(_value(obj, "tags", old=old) or []) if browsable.tagged else set()
    for facet in browsable.counted_facets:
        if facet.attribute is None:
            keys += [(browsable.name, facet.name, tag, *bucket) for tag in sorted(tags)]
        else:
            keys.append((browsable.name, facet.name, str(_value(obj, facet.attribute, old=old)), *bucket))
    tag_keys: list[TagKey] = []
    if tags:
        attributes = POSTINGS[browsable.name]
        facets = tuple(
            "" if (attribute := attributes[name]) is None else str(_value(obj, attribute, old=old))
            for name in POSTING_FACETS
        )
        tag_keys = [(browsable.name, tag, *bucket, *facets) for tag in sorted(tags)]
    return keys, tag_keys, tags


def _postings(browsable: Browsable, obj: Any, *, old: bool) -> dict[str, Any]:
    """The posting columns of one row (its values before this flush with ``old``)."""
    return {
        column: None if attribute is None else _value(obj, attribute, old=old)
        for column, attribute in POSTINGS[browsable.name].items()
    }


def indexed_attributes(browsable: Browsable) -> list[str]:
    """The model attributes the indexes of ``browsable`` read: its buckets, counted facets and, if tagged,
    what its postings copy."""
    attributes = [*BUCKET, *(f.attribute for f in browsable.counted_facets if f.attribute is not None)]
    attributes += filter(None, POSTINGS.get(browsable.name, {}).values())
    return list(dict.fromkeys(attributes))


INDEXED_ATTRIBUTES = {b.name: indexed_attributes(b) for b in INDEXED.values()}


def _apply_defaults(browsable: Browsable, obj: Any) -> None:
    """A row added to the session gets its column defaults when it is inserted, after this hook: apply the
    Python-side ones the indexes read now (what the INSERT would have applied), before they are read."""
    table = browsable.model.__table__  # type: ignore[attr-defined]
    for attribute in INDEXED_ATTRIBUTES[browsable.name]:
        default = table.c[browsable.column(attribute).key].default
        if getattr(obj, attribute) is None and default is not None:
            setattr(obj, attribute, default.arg(None) if default.is_callable else default.arg)


_COUNTS = CounterTable(BrowseCount, ["source", "facet", "value", *BUCKET])
_TAG_COUNTS = CounterTable(BrowseTagCount, ["source", "tag", *TAG_COUNTED])


@event.listens_for(Session, "before_flush")
def _maintain(session: Session, _flush: UOWTransaction, _instances: Iterable[Any] | None) -> None:
    deltas: Counter[Key] = Counter()
    tag_deltas: Counter[TagKey] = Counter()
    tag_changes: list[TagChange] = []
    for obj in session.new:
        browsable = INDEXED.get(type(obj))
        if browsable is not None:
            if obj.id is None:  # the column default, applied now so the tag rows can name the row
                obj.id = new_id()
            _apply_defaults(browsable, obj)
            keys, tag_keys, tags = _keys(browsable, obj, old=False)
            deltas.update(keys)
            tag_deltas.update(tag_keys)
            if tags:
                tag_changes.append(
                    (browsable.name, obj.id, set(), tags, _postings(browsable, obj, old=False), False)
                )
    for obj in session.dirty:
        browsable = INDEXED.get(type(obj))
        if browsable is not None and session.is_modified(obj, include_collections=False):
            old_keys, old_tag_keys, old_tags = _keys(browsable, obj, old=True)
            new_keys, new_tag_keys, new_tags = _keys(browsable, obj, old=False)
            deltas.subtract(old_keys)
            deltas.update(new_keys)
            tag_deltas.subtract(old_tag_keys)
            tag_deltas.update(new_tag_keys)
            if not (old_tags or new_tags):
                continue
            if "updated_at" in POSTINGS[browsable.name].values() and not get_history(obj, "updated_at").added:
                obj.updated_at = utcnow()  # what the column's onupdate would set in this flush, known now
            postings = _postings(browsable, obj, old=False)
            moved = postings != _postings(browsable, obj, old=True) and bool(old_tags & new_tags)
            if old_tags != new_tags or moved:
                tag_changes.append(
                    (browsable.name, obj.id, old_tags - new_tags, new_tags - old_tags, postings, moved)
                )
    for obj in session.deleted:
        browsable = INDEXED.get(type(obj))
        if browsable is not None:
            keys, tag_keys, tags = _keys(browsable, obj, old=True)
            deltas.subtract(keys)
            tag_deltas.subtract(tag_keys)
            if tags:
                tag_changes.append((browsable.name, obj.id, tags, set(), {}, False))
    if not deltas and not tag_changes:
        return
    _write(session.connection(), deltas, tag_deltas, tag_changes)


def index_inserted(connection: Connection, obj: Any) -> None:
    """Index a new row that its operator inserted with Core, in the same transaction (what the flush
    hook does for rows added to a session). ``obj`` carries the row's values as attributes."""
    browsable = INDEXED.get(type(obj))
    if browsable is not None:
        keys, tag_keys, tags = _keys(browsable, obj, old=False)
        changes: list[TagChange] = []
        if tags:
            changes.append((browsable.name, obj.id, set(), tags, _postings(browsable, obj, old=False), False))
        _write(connection, Counter(keys), Counter(tag_keys), changes)


_ENTITY_TAGS = EntityTag.metadata.tables["entity_tags"]
_INSERT_TAGS = insert(_ENTITY_TAGS)
_POSTING_COLUMNS = [*POSTING_SORTS.values(), *BUCKET, *POSTING_FACETS]
_UPDATE_POSTINGS = (
    update(_ENTITY_TAGS)
    .where(_ENTITY_TAGS.c.source == bindparam("b_source"), _ENTITY_TAGS.c.entity_id == bindparam("b_id"))
    .values({name: bindparam(name) for name in _POSTING_COLUMNS})
)


def _write(
    connection: Connection, deltas: Counter[Key], tag_deltas: Counter[TagKey], tag_changes: list[TagChange]
) -> None:
    """Tag postings first (removed, then the kept ones rewritten if their row moved, then added), then
    the counters, in one round trip on PostgreSQL (no statement here reads another's result)."""
    with pipelined(connection):
        _write_statements(connection, deltas, tag_deltas, tag_changes)


def _write_statements(
    connection: Connection, deltas: Counter[Key], tag_deltas: Counter[TagKey], tag_changes: list[TagChange]
) -> None:
    for source, entity_id, removed, _added, _values, _moved in tag_changes:
        if removed:
            connection.execute(
                delete(_ENTITY_TAGS).where(
                    _ENTITY_TAGS.c.source == source,
                    _ENTITY_TAGS.c.entity_id == entity_id,
                    _ENTITY_TAGS.c.tag.in_(sorted(removed)),
                )
            )
    rewritten = [
        {"b_source": source, "b_id": entity_id, **values}
        for source, entity_id, _removed, _added, values, moved in tag_changes
        if moved
    ]
    if rewritten:
        connection.execute(_UPDATE_POSTINGS, rewritten)
    added_rows = [
        {"source": source, "entity_id": entity_id, "tag": tag, **values}
        for source, entity_id, _removed, added, values, _moved in tag_changes
        for tag in sorted(added)
    ]
    if added_rows:
        connection.execute(_INSERT_TAGS, added_rows)
    _COUNTS.add(connection, deltas)
    _TAG_COUNTS.add(connection, tag_deltas)
    upsert_scopes(connection, scope_deltas(deltas, ROLLED_UP))


def _tag_rows(connection: Connection, browsable: Browsable) -> Any:
    """Every tag of every row, expanded from the rows' JSON tag lists, with the posting columns:
    (id, tag, then ``_POSTING_COLUMNS`` in order)."""
    table = browsable.model.__table__  # type: ignore[attr-defined]
    if connection.dialect.name == "postgresql":
        tag = func.jsonb_array_elements_text(table.c.tags).table_valued("value").alias("tag")
    else:
        tag = func.json_each(table.c.tags).table_valued("value").alias("tag")
    attributes = POSTINGS[browsable.name]
    values = [
        literal(None, EntityTag.__table__.c[name].type).label(name)
        if attributes[name] is None
        else table.c[browsable.column(attributes[name]).key].label(name)  # type: ignore[arg-type]
        for name in _POSTING_COLUMNS
    ]
    return select(table.c.id, tag.c.value.label("tag"), *values).select_from(table).join(tag, literal(True))


def rebuild(connection: Connection, browsable: Browsable) -> None:
    """Recompute one browsable's tag index and counters from its table."""
    table = browsable.model.__table__  # type: ignore[attr-defined]
    bucket = (table.c.visibility, table.c.workspace_id, table.c.owner_id)
    connection.execute(delete(EntityTag).where(EntityTag.source == browsable.name))
    connection.execute(delete(BrowseCount).where(BrowseCount.source == browsable.name))
    connection.execute(delete(BrowseTagCount).where(BrowseTagCount.source == browsable.name))
    columns = ["source", "facet", "value", "visibility", "workspace_id", "owner_id", "count"]
    if browsable.tagged:
        tags = _tag_rows(connection, browsable).subquery()
        connection.execute(
            insert(EntityTag).from_select(
                ["source", "entity_id", "tag", *_POSTING_COLUMNS],
                select(literal(browsable.name), *tags.c).distinct(),
            )
        )
    total = select(literal(browsable.name), literal(TOTAL), literal(TOTAL), *bucket, func.count()).group_by(
        *bucket
    )
    connection.execute(insert(BrowseCount).from_select(columns, total))
    for facet in browsable.counted_facets:
        if facet.attribute is None:
            tags_table = EntityTag.__table__
            query = (
                select(literal(browsable.name), literal(facet.name), tags_table.c.tag, *bucket, func.count())
                .select_from(tags_table.join(table, table.c.id == tags_table.c.entity_id))
                .where(tags_table.c.source == browsable.name)
                .group_by(tags_table.c.tag, *bucket)
            )
        else:
            column = table.c[browsable.column(facet.attribute).key]
            query = select(
                literal(browsable.name), literal(facet.name), column, *bucket, func.count()
            ).group_by(column, *bucket)
        connection.execute(insert(BrowseCount).from_select(columns, query))
    if browsable.tagged:
        postings = EntityTag.__table__.c
        counted = [postings[name] for name in TAG_COUNTED]
        key = [func.coalesce(column, "") if column.nullable else column for column in counted]
        per_tag = (
            select(postings.source, postings.tag, *key, func.count())
            .where(postings.source == browsable.name)
            .group_by(postings.source, postings.tag, *counted)
            .order_by(postings.source, postings.tag, *counted)  # a tag's counters together on disk
        )
        connection.execute(insert(BrowseTagCount).from_select([*_TAG_COUNTS.key_columns, "count"], per_tag))
    rebuild_scopes(connection, browsable)


def rebuild_all(connection: Connection) -> None:
    for browsable in INDEXED.values():
        rebuild(connection, browsable)


#: The derived tables, each with what a rebuild makes of it (no counter at zero).
_DERIVED = (
    ("entity_tags", select(_ENTITY_TAGS)),
    ("browse_counts", select(BrowseCount.__table__).where(BrowseCount.count != 0)),
    ("browse_scope_counts", select(BrowseScopeCount.__table__).where(BrowseScopeCount.count != 0)),
    ("browse_tag_counts", select(BrowseTagCount.__table__).where(BrowseTagCount.count != 0)),
)


def snapshot(connection: Connection) -> dict[str, set[tuple[Any, ...]]]:
    """The indexes as sets of rows by table (zero counts left out), for comparing with a rebuild."""
    return {name: {tuple(row) for row in connection.execute(rows)} for name, rows in _DERIVED}


def verify_all(connection: Connection) -> str | None:
    """None if the indexes match a rebuild (made in a savepoint, then rolled back); else the difference."""
    before = snapshot(connection)
    savepoint = connection.begin_nested()
    try:
        rebuild_all(connection)
        after = snapshot(connection)
    finally:
        savepoint.rollback()
    for name, kept in before.items():
        fresh = after[name]
        if kept != fresh:
            extra, missing = sorted(kept - fresh)[:3], sorted(fresh - kept)[:3]
            return f"{name} differs from a rebuild: stale {extra}, missing {missing}"
    return None
