"""GraphQL for DTUs: the type, its history, and the operator mutations."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON
from strawberry.utils.str_converters import to_camel_case

from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.errors import FieldErrorType, payload_errors
from concord_core.api.gql.ids import expect_global_id, to_global_id
from concord_core.api.gql.nodes import Node, register_node
from concord_core.auth.policy import Visibility, can_read
from concord_core.db import models
from concord_core.operators import dtus as ops
from concord_core.operators.errors import FieldError, OperatorError

# Expose the domain enums as GraphQL enums (strawberry.enum registers the class itself).
strawberry.enum(
    Visibility,
    description="Who can see a thing: private (owner), workspace (members), "
    "unlisted (anyone with the ID), public.",
)
strawberry.enum(ops.Tier)
strawberry.enum(
    ops.CitationMode,
    description="original: cites nothing; citing: may cite; derivative: cites at least one DTU.",
)


@strawberry.type
class HumanLayer:
    summary: str
    bullets: list[str]
    examples: list[str]


@strawberry.type
class CoreLayer:
    definitions: list[str]
    invariants: list[str]
    examples: list[str]
    claims: list[str]
    next_actions: list[str]


# A stored layer holds what was given; the rest are these defaults (made once: the lists in them are
# shared by every layer built from them and never changed).
_HUMAN_DEFAULTS = ops.HumanLayer().model_dump()
_CORE_DEFAULTS = ops.CoreLayer().model_dump()


def _human(data: dict[str, Any]) -> HumanLayer:
    return HumanLayer(**{**_HUMAN_DEFAULTS, **data})


def _core(data: dict[str, Any]) -> CoreLayer:
    return CoreLayer(**{**_CORE_DEFAULTS, **data})


@strawberry.type
class DtuVersion:
    version: int
    change: str
    title: str
    human: HumanLayer
    core: CoreLayer
    machine: JSON
    tags: list[str]
    tier: ops.Tier
    type: str
    visibility: Visibility
    citation_mode: ops.CitationMode
    citation_keys: strawberry.Private[list[str]]
    content_hash: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: models.DtuVersion) -> DtuVersion:
        return cls(
            version=row.version,
            change=row.change,
            title=row.title,
            human=_human(row.human),
            core=_core(row.core),
            machine=cast(JSON, row.machine),
            tags=row.tags,
            tier=ops.Tier(row.tier),
            type=row.dtu_type,
            visibility=Visibility(row.visibility),
            citation_mode=ops.CitationMode(row.citation_mode),
            citation_keys=row.citations,
            content_hash=row.content_hash,
            created_at=row.created_at,
        )

    @strawberry.field(description="The IDs of the DTUs this version cited that you can read.")
    async def citation_ids(self, info: GqlInfo) -> list[strawberry.ID]:
        return [
            strawberry.ID(to_global_id("Dtu", row.id)) for row in await _readable(info, self.citation_keys)
        ]


async def _readable(info: GqlInfo, keys: list[str]) -> list[models.Dtu]:
    """The DTUs of ``keys`` that exist and the caller may read (per the policy), in order."""
    rows = await info.context.loaders.dtus.load_many(keys)
    principal = info.context.principal
    return [row for row in rows if row is not None and can_read(principal, row)]


# The enum members by stored value, for Dtu.from_row: a dict lookup, where calling the enum searches
# (about 1 µs each, a few per item of a page). Values the database holds are always members.
_TIERS = {member.value: member for member in ops.Tier}
_VISIBILITIES = {member.value: member for member in Visibility}
_MODES = {member.value: member for member in ops.CitationMode}


@strawberry.type(
    description="A Discrete Thought Unit: a versioned knowledge item. Readable per its visibility."
)
class Dtu(Node):
    key: strawberry.Private[str]
    title: str
    human: HumanLayer
    core: CoreLayer
    machine: JSON
    tags: list[str]
    tier: ops.Tier
    type: str
    visibility: Visibility
    citation_mode: ops.CitationMode
    citation_keys: strawberry.Private[list[str]]
    status: str
    merged_into_id: strawberry.ID | None
    content_hash: str
    version: int
    owner_id: strawberry.ID
    workspace_id: strawberry.ID
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: models.Dtu | Mapping[str, Any]) -> Dtu:
        """A DTU from its model, or from some of its columns by attribute name (a page's, which fetched
        only the columns of the fields its query selects, see DTU_COLUMNS; the id always). A field whose
        column is missing is None: the query did not select it, so nothing reads it."""
        get: Callable[[str], Any] = partial(getattr, row) if isinstance(row, models.Dtu) else row.get
        key, merged_into, owner, workspace = (
            get("id"),
            get("merged_into_id"),
            get("owner_id"),
            get("workspace_id"),
        )
        human, core, tier, visibility, mode = (
            get("human"),
            get("core"),
            get("tier"),
            get("visibility"),
            get("citation_mode"),
        )
        return cls(
            id=strawberry.ID(to_global_id("Dtu", key)),
            key=key,
            title=get("title"),
            human=_human(human) if human is not None else cast(HumanLayer, None),
            core=_core(core) if core is not None else cast(CoreLayer, None),
            machine=cast(JSON, get("machine")),
            tags=get("tags"),
            tier=_TIERS[tier] if tier is not None else cast(ops.Tier, None),
            type=get("dtu_type"),
            visibility=_VISIBILITIES[visibility] if visibility is not None else cast(Visibility, None),
            citation_mode=_MODES[mode] if mode is not None else cast(ops.CitationMode, None),
            citation_keys=get("citations"),
            status=get("status"),
            merged_into_id=strawberry.ID(to_global_id("Dtu", merged_into)) if merged_into else None,
            content_hash=get("content_hash"),
            version=get("version"),
            owner_id=strawberry.ID(to_global_id("User", owner)) if owner else cast(strawberry.ID, None),
            workspace_id=strawberry.ID(to_global_id("Workspace", workspace))
            if workspace
            else cast(strawberry.ID, None),
            created_at=get("created_at"),
            updated_at=get("updated_at"),
        )

    @strawberry.field(description="The DTUs this one cites that you can read.")
    async def citations(self, info: GqlInfo) -> list[Dtu]:
        return [Dtu.from_row(row) for row in await _readable(info, self.citation_keys)]

    @strawberry.field(description="Every version of this DTU, oldest first.")
    async def history(self, info: GqlInfo) -> list[DtuVersion]:
        return [DtuVersion.from_row(row) for row in await info.context.loaders.dtu_versions.load(self.key)]


#: The columns of ``dtus`` each field of Dtu reads: a page of DTUs fetches only those of the fields its
#: query selects (a field missing here fetches every column).
DTU_COLUMNS: dict[str, tuple[str, ...]] = {
    "__typename": (),
    "id": ("id",),
    "title": ("title",),
    "human": ("human",),
    "core": ("core",),
    "machine": ("machine",),
    "tags": ("tags",),
    "tier": ("tier",),
    "type": ("dtu_type",),
    "visibility": ("visibility",),
    "citationMode": ("citation_mode",),
    "citations": ("citations",),
    "status": ("status",),
    "mergedIntoId": ("merged_into_id",),
    "contentHash": ("content_hash",),
    "version": ("version",),
    "ownerId": ("owner_id",),
    "workspaceId": ("workspace_id",),
    "createdAt": ("created_at",),
    "updatedAt": ("updated_at",),
    "history": ("id",),
}


@strawberry.input
class HumanLayerInput:
    summary: str | None = strawberry.UNSET
    bullets: list[str] | None = strawberry.UNSET
    examples: list[str] | None = strawberry.UNSET


@strawberry.input
class CoreLayerInput:
    definitions: list[str] | None = strawberry.UNSET
    invariants: list[str] | None = strawberry.UNSET
    examples: list[str] | None = strawberry.UNSET
    claims: list[str] | None = strawberry.UNSET
    next_actions: list[str] | None = strawberry.UNSET


@strawberry.input
class DtuFieldsInput:
    title: str | None = strawberry.UNSET
    human: HumanLayerInput | None = strawberry.UNSET
    core: CoreLayerInput | None = strawberry.UNSET
    machine: JSON | None = strawberry.UNSET
    tags: list[str] | None = strawberry.UNSET
    tier: ops.Tier | None = strawberry.UNSET
    type: str | None = strawberry.UNSET
    citation_mode: ops.CitationMode | None = strawberry.UNSET
    citations: list[strawberry.ID] | None = strawberry.UNSET


@strawberry.input
class CreateDtuInput(DtuFieldsInput):
    title: str
    visibility: Visibility = Visibility.PRIVATE
    workspace_id: strawberry.ID | None = strawberry.UNSET


@strawberry.input
class EditDtuInput(DtuFieldsInput):
    id: strawberry.ID
    expected_version: int


def input_to_dict(value: Any) -> Any:
    """A Strawberry input as plain data, leaving out fields the client did not send."""
    if isinstance(value, list):
        return [input_to_dict(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "__strawberry_definition__"):
        return {
            name: input_to_dict(field_value)
            for name, field_value in vars(value).items()
            if field_value is not strawberry.UNSET and field_value is not None
        }
    return value


def _dtu_data(value: Any) -> dict[str, Any]:
    data = input_to_dict(value)
    if "type" in data:
        data["dtu_type"] = data.pop("type")
    if "citations" in data:
        data["citations"] = [
            expect_global_id(c, "Dtu", "cited dtu", f"citations.{i}") for i, c in enumerate(data["citations"])
        ]
    if "workspace_id" in data:
        data["workspace_id"] = expect_global_id(data["workspace_id"], "Workspace", "workspace", "workspaceId")
    if "id" in data:
        data["id"] = expect_global_id(data["id"], "Dtu", "dtu", "id")
    return data


#: Operator field names that the GraphQL input spells differently (beyond snake_case -> camelCase).
_INPUT_NAMES = {"dtu_type": "type"}


def client_errors(exc: OperatorError) -> list[FieldErrorType]:
    """Payload errors whose ``field`` is the input path as the client wrote it (``core.nextActions.0``,
    ``type``), not the operator's Python name (``core.next_actions.0``, ``dtu_type``)."""

    def client_path(path: str | None) -> str | None:
        if path is None:
            return None
        return ".".join(_INPUT_NAMES.get(part, to_camel_case(part)) for part in path.split("."))

    return payload_errors(
        OperatorError([FieldError(client_path(e.field), e.code, e.message) for e in exc.errors])
    )


@strawberry.type
class DtuPayload:
    dtu: Dtu | None = None
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type
class DedupeGroup:
    kept: strawberry.ID
    merged: list[strawberry.ID]


@strawberry.type
class DedupeDtusPayload:
    groups: list[DedupeGroup] = strawberry.field(default_factory=list)
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


async def _dtu_mutation(info: GqlInfo, work: Any) -> DtuPayload:
    try:
        row = await info.context.run(work)
    except OperatorError as exc:
        return DtuPayload(errors=client_errors(exc))
    return DtuPayload(dtu=Dtu.from_row(row))


async def load_dtu(info: GqlInfo, key: str) -> Dtu | None:
    try:
        row = await info.context.read(lambda s: ops.get_dtu(info.context.ops, s, key))
    except OperatorError:
        return None
    return Dtu.from_row(row)


register_node("Dtu", load_dtu)


@strawberry.type
class DtuQueries:
    @strawberry.field(
        description="A DTU by ID; null when it does not exist or you cannot read it. "
        "Needs: read on the DTU (per its visibility)."
    )
    async def dtu(self, info: GqlInfo, id: strawberry.ID) -> Dtu | None:
        try:
            key = expect_global_id(id, "Dtu", "dtu")
        except OperatorError:
            return None
        return await load_dtu(info, key)


@strawberry.type
class DtuMutations:
    @strawberry.mutation(
        description="Create a DTU. Needs: editor or owner of the workspace (default: yours)."
    )
    async def create_dtu(self, info: GqlInfo, input: CreateDtuInput) -> DtuPayload:
        ctx = info.context.ops
        return await _dtu_mutation(info, lambda: ops.create_dtu(ctx, _dtu_data(input)))

    @strawberry.mutation(
        description="Change a DTU; fails with CONFLICT unless expectedVersion is its current version. "
        "Needs: its owner, or an editor of its workspace when not private."
    )
    async def edit_dtu(self, info: GqlInfo, input: EditDtuInput) -> DtuPayload:
        ctx = info.context.ops
        return await _dtu_mutation(info, lambda: ops.edit_dtu(ctx, _dtu_data(input)))

    @strawberry.mutation(
        description="Merge sources into a target, keeping lineage. Needs: edit on all of them."
    )
    async def merge_dtus(
        self, info: GqlInfo, target_id: strawberry.ID, source_ids: list[strawberry.ID]
    ) -> DtuPayload:
        ctx = info.context.ops

        def work() -> models.Dtu:
            target = expect_global_id(target_id, "Dtu", "dtu", "targetId")
            sources = [expect_global_id(s, "Dtu", "dtu", f"sourceIds.{i}") for i, s in enumerate(source_ids)]
            return ops.merge_dtus(ctx, target, sources)

        return await _dtu_mutation(info, work)

    @strawberry.mutation(description="Change who can see a DTU after checking it can be. Needs: its owner.")
    async def publish_dtu(self, info: GqlInfo, id: strawberry.ID, visibility: Visibility) -> DtuPayload:
        ctx = info.context.ops
        return await _dtu_mutation(
            info, lambda: ops.publish_dtu(ctx, expect_global_id(id, "Dtu", "dtu", "id"), visibility.value)
        )

    @strawberry.mutation(
        description="Merge DTUs with identical content in a workspace. Needs: editor or owner."
    )
    async def dedupe_dtus(
        self, info: GqlInfo, workspace_id: strawberry.ID | None = None, dry_run: bool = False
    ) -> DedupeDtusPayload:
        ctx = info.context.ops

        def work() -> list[ops.DedupeGroup]:
            workspace = (
                expect_global_id(workspace_id, "Workspace", "workspace", "workspaceId")
                if workspace_id
                else None
            )
            return ops.dedupe_dtus(ctx, workspace, dry_run=dry_run)

        try:
            groups = await info.context.run(work)
        except OperatorError as exc:
            return DedupeDtusPayload(errors=client_errors(exc))
        return DedupeDtusPayload(
            groups=[
                DedupeGroup(
                    kept=strawberry.ID(to_global_id("Dtu", g.kept_id)),
                    merged=[strawberry.ID(to_global_id("Dtu", m)) for m in g.merged_ids],
                )
                for g in groups
            ]
        )
