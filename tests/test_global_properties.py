"""Global's connections against a brute-force reference (issue 6), on SQLite and PostgreSQL.

Hypothesis builds a world through the operators (DTUs created, edited, published and merged; artifacts,
lens items and jobs) by three people in their own and a shared workspace, then asks every connection
(``dtus``, ``artifacts``, ``lensItems``, ``jobs``) as five principals with random filters, searches,
orderings and page sizes. The reference is plain Python over the rows read straight from the tables, with
:func:`concord_core.auth.policy.can_read` and the listing rule. For each request:

* the pages, followed by ``endCursor`` (or backwards by ``startCursor`` with ``last``/``before``), concatenate
  to exactly the reference, in order, with no duplicate and nothing missing;
* that still holds when rows are inserted between page fetches: an inserted row shows up exactly when it
  sorts past the page the client has reached (keyset cursors are stable);
* ``totalCount`` and every facet (disjunctive, top ``limit`` values, ``truncated``) match the reference;
* at the end of every example the browse indexes equal a rebuild (``verify_all``).

The world grows from example to example (one database per backend for the module), which only makes later
examples harder. Profiles: ``ci`` (default, 25 derandomized examples) and ``thorough`` (200, random); pick
one with ``CONCORD_HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
from authz import key_of
from global_world import (
    ARTIFACT_KINDS,
    ASKERS,
    BACKENDS,
    CREATORS,
    DOCUMENTS,
    DTU_TYPES,
    FACETS,
    JOB_TYPES,
    TAGS,
    TIERS,
    VISIBILITIES,
    WORDS,
    Query,
    Row,
    World,
    all_rows,
    expected,
    expected_facet,
    graphql_variables,
    open_world,
    seed,
)
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from concord_core.browse.indexes import verify_all
from concord_core.db.models import Dtu
from concord_core.operators import artifacts as artifact_ops
from concord_core.operators import dtus as dtu_ops
from concord_core.operators import lens_items as item_ops
from concord_core.operators.errors import OperatorError

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking: the world an example ran against has moved on, so a shrunk replay is not the same
    # test. The failing example is reported as drawn.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=200,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(os.environ.get("CONCORD_HYPOTHESIS_PROFILE", "ci"))

MAX_PAGES = 12  # page sizes are chosen so no traversal needs more
#: What the examples exercised, per backend; the last test checks nothing important was left out.
COVERED: dict[str, set[str]] = {backend: set() for backend in BACKENDS}


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with open_world(request.param, tmp_path_factory.mktemp(f"global-{request.param}")) as opened:
        seed(opened)
        yield opened


# --- building the world through the operators --------------------------------------------------------

phrases = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join)
tag_sets = st.lists(st.sampled_from(TAGS), max_size=3, unique=True)


def attempt(work: Callable[[], Any]) -> None:
    """Run an operator; a refusal (a merge across workspaces, publishing without a summary) is fine."""
    with suppress(OperatorError):
        work()


@st.composite
def create_dtu(draw: st.DrawFn, world: World) -> Callable[[], Any]:
    who = draw(st.sampled_from(CREATORS))
    data = {
        "title": draw(phrases),
        "tags": draw(tag_sets),
        "tier": draw(st.sampled_from(TIERS)),
        "dtu_type": draw(st.sampled_from(DTU_TYPES)),
        "visibility": draw(st.sampled_from(VISIBILITIES)),
        "workspace_id": draw(st.sampled_from(world.workspaces_of(who))),
        "human": {"summary": draw(phrases)},
        "core": {"claims": draw(st.lists(phrases, max_size=1))},
    }
    return lambda: dtu_ops.create_dtu(world.ctx(who), data)


picks = st.integers(0, 10**6)  # which existing row: resolved when the operation runs, so what is drawn
#                               never depends on the state the earlier examples left


@st.composite
def change_dtu(draw: st.DrawFn, world: World) -> Callable[[], Any]:
    """An edit, a publish or a merge of existing DTUs, by the owner of the (target) DTU."""
    kind = draw(st.sampled_from(["edit", "publish", "merge"]))
    target, source = draw(picks), draw(picks)
    changes: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {}, optional={"tags": tag_sets, "tier": st.sampled_from(TIERS), "title": phrases}
        )
    )
    visibility = draw(st.sampled_from(VISIBILITIES))

    def work() -> None:
        with world.runtime.db.read() as session:
            rows = list(session.scalars(select(Dtu).order_by(Dtu.id)))
        active = [row for row in rows if row.status == "active"]
        if not active:
            return
        dtu = (active if kind == "merge" else rows)[target % len(active if kind == "merge" else rows)]
        owner = world.ctx(next(name for name in CREATORS if world.people[name].user_id == dtu.owner_id))
        if kind == "edit":
            dtu_ops.edit_dtu(owner, {"id": dtu.id, "expected_version": dtu.version, **changes})
        elif kind == "publish":
            dtu_ops.publish_dtu(owner, dtu.id, visibility)
        else:
            # mostly a merge that can succeed: another active DTU of the same workspace
            others = [row for row in active if row.workspace_id == dtu.workspace_id and row.id != dtu.id]
            candidates = others if others and source % 4 else rows
            dtu_ops.merge_dtus(owner, dtu.id, [candidates[source % len(candidates)].id])

    return work


@st.composite
def create_artifact(draw: st.DrawFn, world: World) -> Callable[[], Any]:
    who = draw(st.sampled_from(CREATORS))
    data = {
        "name": draw(phrases),
        "kind": draw(st.sampled_from(ARTIFACT_KINDS)),
        "tags": draw(tag_sets),
        "visibility": draw(st.sampled_from(VISIBILITIES)),
        "workspace_id": draw(st.sampled_from(world.workspaces_of(who))),
    }
    return lambda: artifact_ops.create_artifact(world.ctx(who), data, world.blob(data["name"]))


@st.composite
def create_item(draw: st.DrawFn, world: World) -> Callable[[], Any]:
    who = draw(st.sampled_from(CREATORS))
    data = {
        "lens_id": "knowledge",
        "item_type": "dtu_ref",
        "data": {"title": draw(phrases), "sourceKind": "dtu", "sourceId": "-", "note": draw(phrases)},
        "visibility": draw(st.sampled_from(VISIBILITIES)),
        "workspace_id": draw(st.sampled_from(world.workspaces_of(who))),
    }
    archive = draw(st.booleans())

    def work() -> None:
        item = item_ops.create_item(world.ctx(who), data)
        if archive:
            item_ops.set_item_status(
                world.ctx(who), {"id": item.id, "status": "archived", "expected_version": item.version}
            )

    return work


@st.composite
def enqueue_job(draw: st.DrawFn, world: World) -> Callable[[], Any]:
    from concord_core.jobs.control import cancel_job
    from concord_core.jobs.enqueue import enqueue_job as enqueue

    who = draw(st.sampled_from(CREATORS))
    data = {
        "job_type": draw(st.sampled_from(JOB_TYPES)),
        "input": {"note": draw(phrases)},
        "workspace_id": draw(st.sampled_from(world.workspaces_of(who))),
    }
    cancel = draw(st.booleans())

    def work() -> None:
        catalog = world.runtime.jobs.catalog
        job, _created = enqueue(world.ctx(who), catalog, data)
        if cancel:
            cancel_job(world.ctx(who), catalog, job.id)

    return work


def operation(world: World) -> st.SearchStrategy[Callable[[], Any]]:
    return st.one_of(
        create_dtu(world),
        create_dtu(world),
        change_dtu(world),
        create_artifact(world),
        create_item(world),
        enqueue_job(world),
    )


INSERTERS = {"dtus": create_dtu, "artifacts": create_artifact, "lens_items": create_item, "jobs": enqueue_job}


# --- queries --------------------------------------------------------------------------------------

FILTERS = {
    "dtus": ("tags", "tier", "visibility", "type", "status", "owner", "workspace", "created", "updated"),
    "artifacts": ("tags", "type", "visibility", "owner", "workspace", "created", "updated"),
    "lens_items": ("lens", "type", "status"),
    "jobs": ("type", "status", "owner", "workspace", "created", "updated"),
}
SORTS = {
    "dtus": ("created", "updated", "title"),
    "artifacts": ("created", "updated", "title"),
    "lens_items": ("created", "updated"),
    "jobs": ("created",),
}


@st.composite
def filter_value(draw: st.DrawFn, world: World, source: str, name: str) -> Any:
    if name == "tags":
        return (draw(tag_sets), draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True)))
    if name in ("created", "updated"):
        return (draw(st.none() | picks), draw(st.none() | picks))  # resolved by `resolve`
    if source == "lens_items":  # lensItems takes one lens, one type and one status
        choices = {
            "lens": ("knowledge", "bookmarks", "nothing"),
            "type": ("dtu_ref", "nothing"),
            "status": ("active", "archived"),
        }[name]
        return [draw(st.sampled_from(choices))]
    people = [world.people[person] for person in CREATORS]
    values = {
        "tier": TIERS,
        "visibility": VISIBILITIES,
        "owner": [person.user_id for person in people],
        "workspace": [*(person.workspace_id for person in people), world.shared_workspace],
        "type": {"dtus": DTU_TYPES, "artifacts": ARTIFACT_KINDS, "jobs": JOB_TYPES}.get(source, ()),
        "status": ("queued", "cancelled") if source == "jobs" else ("active", "merged"),
    }[name]
    return draw(st.lists(st.sampled_from(list(values)), min_size=1, max_size=2, unique=True))


@st.composite
def queries(draw: st.DrawFn, world: World, source: str) -> Query:
    names = draw(st.lists(st.sampled_from(FILTERS[source]), max_size=3, unique=True))
    if source == "lens_items" and "lens" not in names:
        names.append("lens")  # lensItems always names its lens
    filters = {name: draw(filter_value(world, source, name)) for name in names}
    search: list[str] = []
    if source != "jobs" and draw(st.integers(0, 2)) == 0:
        search = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=2, unique=True))
    sorts = [*SORTS[source], *(["relevance"] if search else [])]
    return Query(
        source,
        filters,
        search,
        sort=draw(st.sampled_from(sorts)),
        descending=source == "jobs" or draw(st.booleans()),
    )


def resolve(query: Query, rows: list[Row]) -> Query:
    """Time ranges drawn as picks become the timestamps of existing rows (the end just past one)."""
    filters = dict(query.filters)
    for name in ("created", "updated"):
        if name in filters:
            moments = sorted(row.created_at if name == "created" else row.updated_at for row in rows)
            start, end = (
                moments[pick % len(moments)] if pick is not None and moments else None
                for pick in filters[name]
            )
            filters[name] = (start, end + timedelta(microseconds=1) if end is not None else None)
    return replace(query, filters=filters)


# --- paging ------------------------------------------------------------------------------------


@dataclass
class Traversal:
    ids: list[str]
    first_page: dict[str, Any]
    inserted: list[tuple[str, str | None]]  # (new row's id, the id of the row the client had reached)


def traverse(
    world: World,
    who: str,
    query: Query,
    size: int,
    backwards: bool,
    facet_limit: int,
    insert: Callable[[], list[str]] | None,
) -> Traversal:
    """Every page of ``query`` for ``who``, forwards by endCursor or backwards by startCursor."""
    ids: list[str] = []
    cursor: str | None = None
    first_page: dict[str, Any] = {}
    inserted: list[tuple[str, str | None]] = []
    for number in range(MAX_PAGES + 1):
        assert number < MAX_PAGES, "more pages than the reference has rows for"
        paging = {"last": size, "before": cursor} if backwards else {"first": size, "after": cursor}
        page = world.data(
            who,
            DOCUMENTS[query.source],
            {
                **graphql_variables(query),
                **paging,
                "counts": number == 0,
                "facets": list(FACETS[query.source]),
                "limit": facet_limit,
            },
        )["page"]
        if number == 0:
            first_page = page
        edges, info = page["edges"], page["pageInfo"]
        assert len(edges) <= size
        keys = [key_of(edge["node"]["id"]) for edge in edges]
        ids = keys + ids if backwards else ids + keys
        assert info["startCursor"] == (edges[0]["cursor"] if edges else None)
        assert info["endCursor"] == (edges[-1]["cursor"] if edges else None)
        more = info["hasPreviousPage"] if backwards else info["hasNextPage"]
        if not more:
            return Traversal(ids, first_page, inserted)
        assert len(edges) == size, "a page short of its size claims there is more"
        cursor = info["startCursor"] if backwards else info["endCursor"]
        if insert is not None and number < 2:
            reached = ids[0] if backwards else ids[-1]
            inserted += [(new_id, reached) for new_id in insert()]
    raise AssertionError("unreachable")


def new_rows(world: World, source: str, work: Callable[[], Any]) -> Callable[[], list[str]]:
    def run() -> list[str]:
        before = {row.id for row in all_rows(world, source)}
        attempt(work)
        return [row.id for row in all_rows(world, source) if row.id not in before]

    return run


def check(
    world: World,
    who: str,
    query: Query,
    traversal: Traversal,
    rows_before: list[Row],
    facet_limit: int,
    backwards: bool,
) -> None:
    want_before = expected(world, who, query, rows_before)
    assert len(set(traversal.ids)) == len(traversal.ids), "an item came twice"
    # totalCount and facets were asked on the first page, before anything was inserted.
    assert traversal.first_page["totalCount"] == len(want_before)
    facets = {facet["field"]: facet for facet in traversal.first_page["facets"]}
    assert list(facets) == list(FACETS[query.source])
    for name, facet in facets.items():
        assert facet == expected_facet(world, who, query, name, facet_limit, rows_before), name
    want_after = expected(world, who, query)
    inserted = {new_id for new_id, _reached in traversal.inserted}
    if query.sort == "relevance":
        # The reference cannot rank; it can still say that nothing is missing, doubled or foreign.
        seen = set(traversal.ids)
        assert {row.id for row in want_before} <= seen <= {row.id for row in want_after}
        assert seen - {row.id for row in want_before} <= inserted
        return
    # Every row that was there, plus each inserted row that sorts past the place the client had reached
    # when it was inserted, in the reference order.
    order = [row.id for row in want_after]
    position = {row_id: index for index, row_id in enumerate(order)}
    keep = {row.id for row in want_before}
    for new_id, reached in traversal.inserted:
        if new_id not in position or reached not in position:
            continue  # not one the asker may list, or the place reached is no longer listed
        past = position[new_id] < position[reached] if backwards else position[new_id] > position[reached]
        if past:
            keep.add(new_id)
    assert traversal.ids == [row_id for row_id in order if row_id in keep]


@settings(parent=PROFILE)
@given(data=st.data())
def test_connections_match_the_reference(world: World, data: st.DataObject) -> None:
    for work in data.draw(st.lists(operation(world), min_size=1, max_size=5), label="operations"):
        attempt(work)
    for source in data.draw(st.permutations(list(DOCUMENTS)), label="connections")[:3]:
        who = data.draw(st.sampled_from(ASKERS), label="asker")
        rows = all_rows(world, source)
        query = resolve(data.draw(queries(world, source), label="query"), rows)
        want = expected(world, who, query, rows)
        # Small pages, but never so small that the traversal needs more than MAX_PAGES requests.
        size = min(100, max(data.draw(st.integers(1, 5), label="page size"), math.ceil((len(want) + 6) / 8)))
        backwards = data.draw(st.booleans(), label="backwards")
        facet_limit = data.draw(st.integers(1, 6), label="facet limit")
        insert = None
        if data.draw(st.integers(0, 2), label="insert while paging"):
            insert = new_rows(world, source, data.draw(INSERTERS[source](world), label="inserted"))
        traversal = traverse(world, who, query, size, backwards, facet_limit, insert)
        pages = "one page" if len(traversal.ids) <= size else "several pages"
        for seen in (f"{source} {pages}", f"{source} by {query.sort}", f"inserted while paging {source}"):
            if "inserted" not in seen or traversal.inserted:
                event(seen)
                COVERED[world.backend].add(seen)
        check(world, who, query, traversal, rows, facet_limit, backwards)


def test_the_world_was_really_built(world: World) -> None:
    """After the examples above (same module, same world): the browse indexes the write path kept equal
    a rebuild, and the examples made rows of every kind, by several people, in every visibility."""
    with world.runtime.db.engine.begin() as connection:
        assert verify_all(connection) is None
    dtus = all_rows(world, "dtus")
    assert len(dtus) >= 20
    assert {row.visibility for row in dtus} == set(VISIBILITIES)
    assert len({row.owner_id for row in dtus}) == 3
    assert {row.values["status"] for row in dtus} == {"active", "merged"}
    for source in ("artifacts", "lens_items", "jobs"):
        assert all_rows(world, source), source
    wanted = {f"{source} several pages" for source in DOCUMENTS}
    wanted |= {f"{source} by {sort}" for source, sorts in SORTS.items() for sort in sorts}
    wanted |= {"dtus by relevance", "inserted while paging dtus"}
    assert wanted <= COVERED[world.backend], wanted - COVERED[world.backend]
