"""Tag counts by access scope (``browse_scope_counts``): the tags facet of a request that only the access
predicate filters, without summing a counter per tag for every bucket the caller can read.

``browse_counts`` partitions rows by bucket (visibility, workspace, owner), so a caller's tags facet sums
one counter per tag and readable bucket: tens of thousands of rows at a million DTUs, most of them the
public buckets of every owner. The same counts summed by **scope** instead:

* ``public``: the public rows;
* ``o:<owner>``: the owner's rows that are not public;
* ``w:<workspace>``: the workspace's rows that are neither private nor public;
* ``ow:<owner>:<workspace>``: the rows counted by both of the two above.

``readable_filter`` lets a signed-in person list the public rows, their own, and the rows of their
workspaces that are not private. Those are the disjoint ``public`` + ``o:<me>`` + (``w:<each workspace>``
minus ``ow:<me>:<each workspace>``, the rows of theirs already counted), whatever workspaces they belong
to today: a few counters per tag instead of one per bucket. A scope's counts are sums of ``browse_counts``
rows, so they are kept from the same deltas in the same transaction (:func:`scope_deltas`), rebuilt from
them (:func:`rebuild_scopes`), and stay exact.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, delete, func, insert, literal, select

from concord_core.auth.policy import Visibility, readable_filter
from concord_core.auth.principal import Principal
from concord_core.browse.counters import CounterTable
from concord_core.browse.source import Browsable
from concord_core.db.models import BrowseCount, BrowseScopeCount

PUBLIC = "public"
#: Rows that are neither of these are listed to members of their workspace (readable_filter).
NOT_FOR_MEMBERS = (Visibility.PRIVATE.value, Visibility.PUBLIC.value)

BucketKey = tuple[str, str, str, str, str, str]  # source, facet, value, visibility, workspace, owner
ScopeKey = tuple[str, str, str, str]  # source, facet, scope, value


def rolled_up(browsable: Browsable) -> list[str]:
    """The facets of ``browsable`` kept by scope: its tags (the only facet with hundreds of values)."""
    return [facet.name for facet in browsable.counted_facets if facet.attribute is None]


def scopes_of(visibility: str, workspace_id: str, owner_id: str) -> list[tuple[str, int]]:
    """The scopes a row of this bucket is counted in (with the sign it is counted with: always 1; the
    sign of ``ow:`` is the reader's, :func:`readable_scopes`)."""
    if visibility == Visibility.PUBLIC.value:
        return [(PUBLIC, 1)]
    scopes = [(f"o:{owner_id}", 1)]
    if visibility not in NOT_FOR_MEMBERS:
        scopes += [(f"w:{workspace_id}", 1), (f"ow:{owner_id}:{workspace_id}", 1)]
    return scopes


def scope_deltas(deltas: Mapping[BucketKey, int], facets: Mapping[str, Iterable[str]]) -> Counter[ScopeKey]:
    """The changes to scope counters that ``deltas`` (changes to browse_counts) make, for the rolled-up
    ``facets`` of each source."""
    changes: Counter[ScopeKey] = Counter()
    for (source, facet, value, visibility, workspace_id, owner_id), delta in deltas.items():
        if delta and facet in facets.get(source, ()):
            for scope, sign in scopes_of(visibility, workspace_id, owner_id):
                changes[source, facet, scope, value] += sign * delta
    return changes


_SCOPE_COUNTS = CounterTable(BrowseScopeCount, ["source", "facet", "scope", "value"])


def upsert_scopes(connection: Connection, changes: Counter[ScopeKey]) -> None:
    """Add ``changes`` to the scope counters (one executemany)."""
    _SCOPE_COUNTS.add(connection, changes)


def rebuild_scopes(connection: Connection, browsable: Browsable) -> None:
    """Recompute one browsable's scope counters from its browse_counts."""
    connection.execute(delete(BrowseScopeCount).where(BrowseScopeCount.source == browsable.name))
    facets = rolled_up(browsable)
    if not facets:
        return
    counts = BrowseCount.__table__.c
    members = counts.visibility.not_in(NOT_FOR_MEMBERS)
    # (scope, the browse_counts rows it sums, the columns that tell its scopes apart)
    scopes: list[tuple[ColumnElement[Any], ColumnElement[bool], list[ColumnElement[Any]]]] = [
        (literal(PUBLIC), counts.visibility == Visibility.PUBLIC.value, []),
        (literal("o:") + counts.owner_id, counts.visibility != Visibility.PUBLIC.value, [counts.owner_id]),
        (literal("w:") + counts.workspace_id, members, [counts.workspace_id]),
        (
            literal("ow:") + counts.owner_id + literal(":") + counts.workspace_id,
            members,
            [counts.owner_id, counts.workspace_id],
        ),
    ]
    for scope, rows, apart in scopes:
        summed = (
            select(counts.source, counts.facet, scope, counts.value, func.sum(counts["count"]))
            .where(counts.source == browsable.name, counts.facet.in_(facets), rows)
            .group_by(counts.source, counts.facet, counts.value, *apart)
        )
        connection.execute(
            insert(BrowseScopeCount).from_select(["source", "facet", "scope", "value", "count"], summed)
        )


def readable_scopes(principal: Principal, browsable: Browsable) -> dict[str, int] | None:
    """The scopes whose signed sum is what ``principal`` may list of ``browsable``: scope -> +1 or -1.
    None when scopes cannot say (another access predicate than ``readable_filter``, or an administrator,
    who reads every bucket anyway)."""
    if browsable.access is not readable_filter or principal.is_admin:
        return None
    scopes = {PUBLIC: 1}
    if principal.user_id is not None:
        scopes[f"o:{principal.user_id}"] = 1
        for workspace_id in principal.roles:
            scopes[f"w:{workspace_id}"] = 1
            scopes[f"ow:{principal.user_id}:{workspace_id}"] = -1
    return scopes


def scope_sum(scopes: Mapping[str, int]) -> ColumnElement[Any]:
    """The signed sum of the scope counters in ``scopes``."""
    subtracted = [scope for scope, sign in scopes.items() if sign < 0]
    if not subtracted:
        return func.sum(BrowseScopeCount.count)
    signed = case(
        (BrowseScopeCount.scope.in_(subtracted), -BrowseScopeCount.count), else_=BrowseScopeCount.count
    )
    return func.sum(signed)


#: Search-vector lexemes of the access scopes (migration 0008): no search word can match one, since words
#: are letters, digits and underscores.
SEARCH_PUBLIC = "#p"
SEARCH_OWNER = "#o"
SEARCH_WORKSPACE = "#w"


def search_scopes(principal: Principal, browsable: Browsable) -> list[str] | None:
    """The access-scope lexemes of a scoped search vector that every row ``principal`` may list carries
    at least one of (``#p`` on public rows, ``#o<owner>`` on any other, ``#w<workspace>`` on those its
    workspace's members list: the three clauses of ``readable_filter``). None when they cannot say:
    another access predicate, or an administrator (who reads everything)."""
    if browsable.access is not readable_filter or principal.is_admin:
        return None
    lexemes = [SEARCH_PUBLIC]
    if principal.user_id is not None:
        lexemes.append(f"{SEARCH_OWNER}{principal.user_id}")
        lexemes += [f"{SEARCH_WORKSPACE}{workspace_id}" for workspace_id in principal.roles]
    return lexemes


def scope_lexemes(table: str) -> str:
    """SQL: the access-scope lexemes of a row of ``table`` (the same expression as migration 0008's)."""
    return (
        "array_to_tsvector(array_remove(ARRAY["
        f"CASE WHEN {table}.visibility = 'public' THEN '#p' END, "
        f"CASE WHEN {table}.visibility <> 'public' THEN '#o' || {table}.owner_id END, "
        f"CASE WHEN {table}.visibility NOT IN ('public', 'private') THEN '#w' || {table}.workspace_id END"
        "], NULL))"
    )


def title_search_vector(table: str, column: str, config: str) -> str:
    """SQL: the title's vector and the row's access scopes, exactly the expression of the GIN index
    ``ix_<table>_title_search`` (migration 0008), so the planner can use it."""
    return f"(to_tsvector('{config}', coalesce({table}.{column}, '')) || {scope_lexemes(table)})"
