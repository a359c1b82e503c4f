"""A small world for the Global tests (issue 6), and the brute-force reference they compare against.

Four people: alice owns a shared workspace in which bob is an editor; carol is in no workspace but her own;
dave is an administrator. Each has an API key; the instance runs in jwt mode so that a caller without
credentials is the anonymous principal (apikey mode would refuse them). No job runner threads, so queued
jobs stay as they are while a test reads them.

:func:`seed` gives it a starting spread through the operators; :data:`DOCUMENTS` and
:func:`graphql_variables` ask the four connections for a :class:`Query`.

The reference decides what a principal may list with :func:`concord_core.auth.policy.can_read` plus the
listing rule: someone else's unlisted row is listed only to members of its workspace (and administrators);
to anyone else it is reachable by id alone.
"""

from __future__ import annotations

import io
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from authz import (
    Instance,
    assert_no_internals,
    bearer,
    cheap_passwords,
    database,
    gid,
    issue_key,
    make_user,
    mode_settings,
    open_instance,
)
from sqlalchemy import Engine, event, select

from concord_core.auth.policy import Visibility, can_read, can_read_in_workspace
from concord_core.auth.principal import ANONYMOUS, Principal
from concord_core.db.async_reads import AsyncReads
from concord_core.db.models import Artifact, Dtu, Job, LensItem
from concord_core.jobs.enqueue import enqueue_job as enqueue
from concord_core.operators import accounts as account_ops
from concord_core.operators import artifacts as artifact_ops
from concord_core.operators import dtus as dtu_ops
from concord_core.operators import lens_items as item_ops
from concord_core.operators.base import OperationContext
from concord_core.operators.errors import OperatorError

BACKENDS = ["sqlite", "postgres"]
PEOPLE = ("alice", "bob", "carol", "dave")
#: Who asks, in the words of the issue: the owner, a member of the shared workspace, someone outside it,
#: nobody, and an administrator.
ASKERS = ("alice", "bob", "carol", "anonymous", "dave")

#: Title and search words: the English stemmers of both databases leave them alone, and none is a prefix of
#: another word any row contains, so "matches every search term" is plain word membership in the reference.
#: All lower case and all five letters long, so titles made of them sort the same under any collation (a
#: server whose databases default to en_US ignores spaces and case at first; C does not).
WORDS = ("alpha", "bravo", "delta", "gamma", "hotel", "kappa", "omega", "oscar", "sigma", "tango")
TAGS = ("ambient", "bass", "chord", "drums", "echo", "folk", "groove", "jazz")
CREATORS = ("alice", "bob", "carol")
VISIBILITIES = ("private", "workspace", "unlisted", "public")
TIERS = ("regular", "mega", "hyper", "shadow")
DTU_TYPES = ("note", "idea", "claim")
ARTIFACT_KINDS = ("audio", "image", "document")
JOB_TYPES = ("knowledge.export_markdown", "concord.dtu_import.read")


@dataclass
class Person:
    name: str
    user_id: str | None
    workspace_id: str | None  # their personal workspace
    headers: dict[str, str]
    principal: Principal = ANONYMOUS


class World:
    """A running instance and its people (a plain class: hypothesis prints it by its short repr)."""

    def __init__(self, instance: Instance, people: dict[str, Person], shared_workspace: str) -> None:
        self.instance = instance
        self.people = people
        self.shared_workspace = shared_workspace

    @property
    def runtime(self) -> Any:
        return self.instance.runtime

    def ctx(self, who: str) -> OperationContext:
        ctx: OperationContext = self.runtime.operation_context(self.people[who].principal)
        return ctx

    def post(self, who: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The body of a GraphQL request by ``who``: always a 200, never an internal detail."""
        response = self.instance.client.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=self.people[who].headers
        )
        assert response.status_code == 200, response.text
        assert_no_internals(response.text)
        body: dict[str, Any] = response.json()
        return body

    def statements(self) -> AbstractContextManager[list[str]]:
        """Every statement the instance sends while the block runs (:func:`statements`)."""
        return statements(self.runtime.db.engine, self.runtime.async_reads)

    def data(self, who: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.post(who, query, variables)
        assert not body.get("errors"), body["errors"]
        result: dict[str, Any] = body["data"]
        return result

    def rest(self, who: str, path: str, params: Any = None) -> Any:
        return self.instance.client.get(path, params=params, headers=self.people[who].headers)

    @property
    def backend(self) -> str:
        return "sqlite" if self.runtime.db.is_sqlite else "postgres"

    def __repr__(self) -> str:  # hypothesis prints the strategies' arguments
        return f"World({self.backend})"

    def workspaces_of(self, who: str) -> list[str]:
        """Workspaces ``who`` may create things in."""
        person = self.people[who]
        if person.workspace_id is None:
            return []
        return [person.workspace_id, *([self.shared_workspace] if who in ("alice", "bob") else [])]

    def blob(self, text: str) -> io.BytesIO:
        return io.BytesIO(text.encode())


@contextmanager
def open_world(backend: str, directory: Path, **overrides: Any) -> Iterator[World]:
    settings = {**mode_settings("jwt"), "job_threads": 0, **overrides}
    with (
        cheap_passwords(),
        database(backend, directory) as url,
        open_instance(directory, url, **settings) as inst,
    ):
        runtime = inst.runtime
        accounts = {name: make_user(runtime, f"{name}@example.com", admin=name == "dave") for name in PEOPLE}

        def ctx(name: str) -> OperationContext:
            ctx: OperationContext = runtime.operation_context(runtime.principal_for_user(accounts[name].id))
            return ctx

        shared = account_ops.create_workspace(ctx("alice"), "Studio").id
        account_ops.set_member(ctx("alice"), shared, "bob@example.com", "editor")
        people = {"anonymous": Person("anonymous", None, None, {})}
        for name, account in accounts.items():
            token, _key = issue_key(runtime, account)
            people[name] = Person(
                name, account.id, account.workspace_id, bearer(token), runtime.principal_for_user(account.id)
            )
        yield World(inst, people, shared)


def seed(world: World, rng: random.Random | None = None) -> None:
    """A starting spread through the same operators, so that even hypothesis's first, simplest examples
    page through several pages: 40 DTUs (then edits, publishes and merges), 12 artifacts, 12 lens items
    and 10 jobs, by all three people, in every visibility."""
    rng = rng or random.Random(6)

    def phrase() -> str:
        return " ".join(rng.sample(WORDS, rng.randint(1, 3)))

    def common() -> tuple[str, dict[str, Any]]:
        who = rng.choice(CREATORS)
        return who, {
            "visibility": rng.choice(VISIBILITIES),
            "workspace_id": rng.choice(world.workspaces_of(who)),
        }

    for _ in range(40):
        who, data = common()
        data |= {
            "title": phrase(),
            "tags": rng.sample(TAGS, rng.randint(0, 3)),
            "tier": rng.choice(TIERS),
            "dtu_type": rng.choice(DTU_TYPES),
            "human": {"summary": phrase()},
        }
        dtu_ops.create_dtu(world.ctx(who), data)
    with world.runtime.db.read() as session:
        dtus = list(session.scalars(select(Dtu).order_by(Dtu.created_at)))  # ids are random; this is not
    owners = {world.people[name].user_id: name for name in CREATORS}
    for dtu in rng.sample(dtus, 12):
        owner = world.ctx(owners[dtu.owner_id])
        with suppress(OperatorError):  # publishing may be refused (no summary, unpublished citations)
            dtu_ops.edit_dtu(owner, {"id": dtu.id, "expected_version": dtu.version, "tier": "mega"})
            dtu_ops.publish_dtu(owner, dtu.id, rng.choice(VISIBILITIES))
    for target, source in zip(dtus[:8], dtus[8:16], strict=True):
        if target.workspace_id == source.workspace_id:
            with suppress(OperatorError):  # refused when the source is another member's private DTU
                dtu_ops.merge_dtus(world.ctx(owners[target.owner_id]), target.id, [source.id])
    for _ in range(12):
        who, data = common()
        data |= {"name": phrase(), "kind": rng.choice(ARTIFACT_KINDS), "tags": rng.sample(TAGS, 2)}
        artifact_ops.create_artifact(world.ctx(who), data, world.blob(data["name"]))
    for _ in range(12):
        who, data = common()
        data |= {
            "lens_id": "knowledge",
            "item_type": "dtu_ref",
            "data": {"title": phrase(), "sourceKind": "dtu", "sourceId": "-"},
        }
        item_ops.create_item(world.ctx(who), data)
    for _ in range(10):
        who, data = common()
        data = {"job_type": rng.choice(JOB_TYPES), "input": {}, "workspace_id": data["workspace_id"]}
        enqueue(world.ctx(who), world.runtime.jobs.catalog, data)


# --- the reference --------------------------------------------------------------------------------


def listed(principal: Principal, row: Any) -> bool:
    """Whether ``row`` (with workspace, owner and visibility) belongs in ``principal``'s lists."""
    if not can_read(principal, row):
        return False
    if row.visibility != Visibility.UNLISTED or principal.is_admin or row.owner_id == principal.user_id:
        return True
    return principal.role_in(row.workspace_id) is not None


def job_listed(principal: Principal, row: Any) -> bool:
    return can_read_in_workspace(principal, row.workspace_id, row.owner_id)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def words(*values: Any) -> frozenset[str]:
    return frozenset(
        w for value in values for text in _strings(value) for w in re.findall(r"\w+", text.lower())
    )


@dataclass(frozen=True)
class Row:
    """A browsable row as the reference sees it: facet values by facet name, and its searchable words."""

    id: str
    workspace_id: str
    owner_id: str | None
    visibility: str
    created_at: datetime
    updated_at: datetime
    title: str
    values: dict[str, Any]  # filter/facet name -> value (a set of tags for "tags")
    text: frozenset[str]


def dtu_row(row: Dtu) -> Row:
    return Row(
        row.id,
        row.workspace_id,
        row.owner_id,
        row.visibility,
        row.created_at,
        row.updated_at,
        row.title,
        {
            "tags": frozenset(row.tags),
            "tier": row.tier,
            "visibility": row.visibility,
            "type": row.dtu_type,
            "status": row.status,
            "workspace": row.workspace_id,
            "owner": row.owner_id,
        },
        words(row.title, row.tags, row.human, row.core),
    )


def artifact_row(row: Artifact) -> Row:
    return Row(
        row.id,
        row.workspace_id,
        row.owner_id,
        row.visibility,
        row.created_at,
        row.updated_at,
        row.name,
        {
            "tags": frozenset(row.tags),
            "type": row.kind,
            "visibility": row.visibility,
            "workspace": row.workspace_id,
            "owner": row.owner_id,
        },
        words(row.name, row.tags),
    )


def item_row(row: LensItem) -> Row:
    return Row(
        row.id,
        row.workspace_id,
        row.owner_id,
        row.visibility,
        row.created_at,
        row.updated_at,
        "",
        {
            "lens": row.lens_id,
            "type": row.item_type,
            "status": row.status,
            "visibility": row.visibility,
            "workspace": row.workspace_id,
            "owner": row.owner_id,
        },
        words(row.data),
    )


def job_row(row: Job) -> Row:
    return Row(
        row.id,
        row.workspace_id,
        row.owner_id,
        "",
        row.created_at,
        row.updated_at,
        "",
        {"type": row.job_type, "status": row.status, "workspace": row.workspace_id, "owner": row.owner_id},
        frozenset(),
    )


SOURCES: dict[str, tuple[type, Callable[[Any], Row]]] = {
    "dtus": (Dtu, dtu_row),
    "artifacts": (Artifact, artifact_row),
    "lens_items": (LensItem, item_row),
    "jobs": (Job, job_row),
}


def all_rows(world: World, source: str) -> list[Row]:
    """Every row of a browsable's table, read directly (not through the browse service)."""
    model, convert = SOURCES[source]
    with world.runtime.db.read() as session:
        return [convert(row) for row in session.scalars(select(model))]


@dataclass(frozen=True)
class Query:
    """One request to a connection, in the browse service's terms (the tests turn it into GraphQL/REST)."""

    source: str
    filters: dict[str, Any] = field(
        default_factory=dict
    )  # name -> list of values | ("any"/"all", tags) | range
    search: Sequence[str] = ()  # search words (all must match)
    sort: str = "created"
    descending: bool = True


def matches(query: Query, row: Row, skip: str | None = None) -> bool:
    for name, value in query.filters.items():
        if name == skip:
            continue
        if name == "tags":
            any_of, all_of = value
            tags = row.values["tags"]
            if any_of and not tags & set(any_of):
                return False
            if not set(all_of) <= tags:
                return False
        elif name in ("created", "updated"):
            start, end = value
            moment = row.created_at if name == "created" else row.updated_at
            if (start is not None and moment < start) or (end is not None and moment >= end):
                return False
        elif row.values[name] not in value:
            return False
    return all(term in row.text for term in query.search)


def sort_key(query: Query, row: Row) -> tuple[Any, str]:
    """The reference order; relevance cannot be computed here, so it is compared as a set."""
    attribute = {"created": row.created_at, "updated": row.updated_at, "title": row.title}.get(query.sort)
    return attribute or "", row.id


def expected(world: World, who: str, query: Query, rows: Iterable[Row] | None = None) -> list[Row]:
    """The rows ``who`` should get for ``query``, in order."""
    principal = world.people[who].principal
    visible = job_listed if query.source == "jobs" else listed
    pool = all_rows(world, query.source) if rows is None else rows
    found = [row for row in pool if visible(principal, row) and matches(query, row)]
    return sorted(found, key=lambda row: sort_key(query, row), reverse=query.descending)


ID_FACETS = {"workspace": "Workspace", "owner": "User"}


def expected_facet(
    world: World, who: str, query: Query, name: str, limit: int, rows: Iterable[Row]
) -> dict[str, Any]:
    """A disjunctive facet: counts over the rows matching every filter but the facet's own."""
    principal = world.people[who].principal
    visible = job_listed if query.source == "jobs" else listed
    counts: Counter[str] = Counter()
    for row in rows:
        if visible(principal, row) and matches(query, row, skip=name):
            value = row.values[name]
            counts.update(value if name == "tags" else [value])
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    type_name = ID_FACETS.get(name)
    return {
        "field": name,
        "values": [
            {"value": gid(type_name, value) if type_name else value, "count": n}
            for value, n in ranked[:limit]
        ],
        "truncated": len(ranked) > limit,
        "timedOut": False,
    }


FACETS = {
    "dtus": ("tags", "tier", "visibility", "type", "status", "workspace"),
    "artifacts": ("tags", "type", "visibility", "workspace"),
    "lens_items": ("lens", "type", "status", "visibility"),
    "jobs": ("type", "status"),
}
# --- asking over GraphQL -----------------------------------------------------------------------------

CONNECTION = """
  edges { cursor node { id } }
  pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  totalCount @include(if: $counts)
  facets(fields: $facets, limit: $limit) @include(if: $counts) {
    field values { value count } truncated timedOut
  }
"""
PAGING = (
    "$first: Int, $after: String, $last: Int, $before: String, $counts: Boolean!, $facets: [String!], "
    "$limit: Int!"
)
DOCUMENTS = {
    "dtus": f"""query($filter: DtuFilter, $search: String, $orderBy: OrderBy, {PAGING}) {{
      page: dtus(filter: $filter, search: $search, orderBy: $orderBy,
                 first: $first, after: $after, last: $last, before: $before) {{ {CONNECTION} }} }}""",
    "artifacts": f"""query($filter: ArtifactFilter, $search: String, $orderBy: OrderBy, {PAGING}) {{
      page: artifacts(filter: $filter, search: $search, orderBy: $orderBy,
                      first: $first, after: $after, last: $last, before: $before) {{ {CONNECTION} }} }}""",
    "lens_items": f"""query($lensId: String!, $type: String, $status: String, $search: String,
                            $orderBy: OrderBy, {PAGING}) {{
      page: lensItems(lensId: $lensId, type: $type, status: $status, search: $search, orderBy: $orderBy,
                      first: $first, after: $after, last: $last, before: $before) {{ {CONNECTION} }} }}""",
    "jobs": f"""query($filter: JobFilter, {PAGING}) {{
      page: jobs(filter: $filter, first: $first, after: $after, last: $last, before: $before) {{
        {CONNECTION} }} }}""",
}
ENUM_FILTERS = {("dtus", "tier"), ("dtus", "visibility"), ("artifacts", "visibility"), ("artifacts", "type")}


def graphql_filter(query: Query) -> dict[str, Any]:
    """``query.filters`` as a DtuFilter / ArtifactFilter / JobFilter input."""
    result: dict[str, Any] = {}
    for name, value in query.filters.items():
        if name == "tags":
            result[name] = {"anyOf": value[0], "allOf": value[1]}
        elif name in ("created", "updated"):
            start, end = value
            result[name] = {
                "from": start.isoformat() if start else None,
                "to": end.isoformat() if end else None,
            }
        elif name in ("owner", "workspace"):
            result[name] = [gid("User" if name == "owner" else "Workspace", v) for v in value]
        elif (query.source, name) in ENUM_FILTERS or (query.source, name) == ("jobs", "status"):
            result[name] = [v.upper() for v in value]
        else:
            result[name] = list(value)
    return result


def graphql_variables(query: Query) -> dict[str, Any]:
    if query.source == "lens_items":
        values = {name: query.filters[name][0] for name in ("type", "status") if name in query.filters}
        base: dict[str, Any] = {"lensId": query.filters["lens"][0], **values}
    else:
        base = {"filter": graphql_filter(query)}
    if query.source != "jobs":
        base["search"] = " ".join(query.search) or None
        base["orderBy"] = {"field": query.sort.upper(), "direction": "DESC" if query.descending else "ASC"}
    return base


# --- counting SQL statements -----------------------------------------------------------------------


@contextmanager
def statements(engine: Engine, reads: AsyncReads | None = None) -> Iterator[list[str]]:
    """Every SQL statement sent through SQLAlchemy on ``engine`` while the block runs, and through
    ``reads`` (the event loop's own reads, on PostgreSQL) if given (the live-update publisher's NOTIFY,
    which a write made before the block may send from another thread meanwhile, goes on the driver's
    connection and is not among them)."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    if reads is not None:
        reads.listeners.append(sent.append)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)
        if reads is not None:
            reads.listeners.remove(sent.append)
