"""GraphQL for lenses: the ``lenses`` query, generic lens items, and ``syncToLens``."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON

from concord_core.api.gql.browse import OrderBy, browse_connection, browse_request
from concord_core.api.gql.connections import Connection
from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.errors import FieldErrorType, payload_errors
from concord_core.api.gql.ids import expect_global_id, from_global_id, to_global_id
from concord_core.api.gql.nodes import Node, register_node
from concord_core.auth.policy import Visibility
from concord_core.browse.service import FilterValue
from concord_core.browse.sources import LENS_ITEMS
from concord_core.db import models
from concord_core.operators import lens_items as ops
from concord_core.operators.errors import OperatorError, not_found
from concord_core.plugins.registry import Lens as LoadedLens


@strawberry.type(description="A problem that keeps a lens from loading: `lensId: path: code: message`.")
class LensProblem:
    path: str
    code: str
    message: str


@strawberry.type(description="An installed lens with its manifest, so a frontend can build its navigation.")
class Lens:
    lens_id: str
    name: str | None
    version: str | None
    category: str | None
    status: str = strawberry.field(description="active, or failed (see problems).")
    source: str
    manifest: JSON | None
    problems: list[LensProblem]

    @classmethod
    def from_lens(cls, lens: LoadedLens) -> Lens:
        manifest = lens.manifest or {}
        return cls(
            lens_id=lens.lens_id,
            name=manifest.get("name"),
            version=manifest.get("version"),
            category=manifest.get("category"),
            status=lens.status,
            source=lens.source,
            manifest=cast(JSON, lens.manifest),
            problems=[LensProblem(path=p.path, code=p.code.value, message=p.message) for p in lens.problems],
        )


@strawberry.type(
    description="An item a lens stores in one of its declared data types. Readable per its visibility."
)
class LensItem(Node):
    key: strawberry.Private[str]
    lens_id: str
    type: str
    data: JSON
    status: str
    visibility: Visibility
    version: int
    source_id: strawberry.ID | None = strawberry.field(description="The DTU or artifact it was synced from.")
    owner_id: strawberry.ID
    workspace_id: strawberry.ID
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: models.LensItem) -> LensItem:
        source = None
        if row.source_kind in ("dtu", "artifact") and row.source_id:
            source = strawberry.ID(
                to_global_id("Dtu" if row.source_kind == "dtu" else "Artifact", row.source_id)
            )
        return cls(
            id=strawberry.ID(to_global_id("LensItem", row.id)),
            key=row.id,
            lens_id=row.lens_id,
            type=row.item_type,
            data=cast(JSON, row.data),
            status=row.status,
            visibility=Visibility(row.visibility),
            version=row.version,
            source_id=source,
            owner_id=strawberry.ID(to_global_id("User", row.owner_id)),
            workspace_id=strawberry.ID(to_global_id("Workspace", row.workspace_id)),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


async def load_item(info: GqlInfo, key: str) -> LensItem | None:
    try:
        row = await info.context.read(lambda s: ops.get_item(info.context.ops, s, key))
    except OperatorError:
        return None
    return LensItem.from_row(row)


register_node("LensItem", load_item)


@strawberry.type
class LensItemPayload:
    item: LensItem | None = None
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type
class DeleteLensItemPayload:
    deleted_id: strawberry.ID | None = None
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type
class SyncToLensPayload:
    items: list[LensItem] = strawberry.field(default_factory=list)
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


async def _item_mutation(info: GqlInfo, work: Any) -> LensItemPayload:
    try:
        row = await info.context.run(work)
    except OperatorError as exc:
        return LensItemPayload(errors=payload_errors(exc))
    return LensItemPayload(item=LensItem.from_row(row))


def _item_key(item_id: str) -> str:
    return expect_global_id(item_id, "LensItem", "lens item", "id")


@strawberry.type
class LensQueries:
    @strawberry.field(
        description="Every installed lens, active or failed, with its manifest. Needs: nothing."
    )
    def lenses(self, info: GqlInfo) -> list[Lens]:
        return [Lens.from_lens(lens) for lens in info.context.runtime.lenses.lenses]

    @strawberry.field(
        description="Items of a lens (optionally of one data type and status), newest first unless ordered "
        "otherwise; searchable. Lists what you can read; others' unlisted items are left out. Needs: nothing."
    )
    async def lens_items(
        self,
        info: GqlInfo,
        lens_id: str,
        type: str | None = None,
        status: str | None = None,
        search: str | None = None,
        order_by: OrderBy | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> Connection[LensItem]:
        request = browse_request(None, search, order_by)
        filters: dict[str, FilterValue] = {"lens": [lens_id]}
        if type is not None:
            filters["type"] = [type]
        if status is not None:
            filters["status"] = [status]
        request = replace(request, filters=filters)
        return await browse_connection(
            info, LENS_ITEMS, request, LensItem.from_row, first=first, after=after, last=last, before=before
        )


@strawberry.type
class LensMutations:
    @strawberry.mutation(
        description="Store an item of a lens's data type; data is checked against its JSON "
        "Schema. Needs: editor or owner of the workspace."
    )
    async def create_lens_item(
        self,
        info: GqlInfo,
        lens_id: str,
        type: str,
        data: JSON,
        visibility: Visibility = Visibility.PRIVATE,
        workspace_id: strawberry.ID | None = None,
    ) -> LensItemPayload:
        ctx = info.context.ops

        def work() -> models.LensItem:
            workspace = (
                expect_global_id(workspace_id, "Workspace", "workspace", "workspaceId")
                if workspace_id
                else None
            )
            return ops.create_item(
                ctx,
                {
                    "lens_id": lens_id,
                    "item_type": type,
                    "data": data,
                    "visibility": visibility.value,
                    "workspace_id": workspace,
                },
            )

        return await _item_mutation(info, work)

    @strawberry.mutation(
        description="Replace an item's data; CONFLICT unless expectedVersion is current. "
        "Needs: edit on the item."
    )
    async def update_lens_item(
        self, info: GqlInfo, id: strawberry.ID, data: JSON, expected_version: int
    ) -> LensItemPayload:
        ctx = info.context.ops
        return await _item_mutation(
            info,
            lambda: ops.update_item(
                ctx, {"id": _item_key(id), "data": data, "expected_version": expected_version}
            ),
        )

    @strawberry.mutation(
        description="Change an item's status (e.g. active, archived). Needs: edit on the item."
    )
    async def set_lens_item_status(
        self, info: GqlInfo, id: strawberry.ID, status: str, expected_version: int
    ) -> LensItemPayload:
        ctx = info.context.ops
        return await _item_mutation(
            info,
            lambda: ops.set_item_status(
                ctx, {"id": _item_key(id), "status": status, "expected_version": expected_version}
            ),
        )

    @strawberry.mutation(description="Delete an item. Needs: edit on the item.")
    async def delete_lens_item(
        self, info: GqlInfo, id: strawberry.ID, expected_version: int
    ) -> DeleteLensItemPayload:
        ctx = info.context.ops
        try:
            await info.context.run(lambda: ops.delete_item(ctx, _item_key(id), expected_version))
        except OperatorError as exc:
            return DeleteLensItemPayload(errors=payload_errors(exc))
        return DeleteLensItemPayload(deleted_id=id)

    @strawberry.mutation(
        description="Map DTUs or artifacts into a lens (Global's 'Sync to lens'); a source "
        "already synced returns its existing item. Needs: read on each, and editor of its workspace."
    )
    async def sync_to_lens(
        self, info: GqlInfo, lens_id: str, ids: list[strawberry.ID], type: str | None = None
    ) -> SyncToLensPayload:
        ctx = info.context.ops

        def work() -> list[models.LensItem]:
            sources: list[tuple[ops.SourceKind, str]] = []
            for index, global_id in enumerate(ids):
                try:
                    type_name, key = from_global_id(global_id)
                except OperatorError:
                    raise not_found("dtu or artifact", f"ids.{index}") from None
                if type_name not in ("Dtu", "Artifact"):
                    raise not_found("dtu or artifact", f"ids.{index}")
                sources.append(("dtu" if type_name == "Dtu" else "artifact", key))
            return ops.sync_to_lens(ctx, lens_id, sources, type)

        try:
            rows = await info.context.run(work)
        except OperatorError as exc:
            return SyncToLensPayload(errors=payload_errors(exc))
        return SyncToLensPayload(items=[LensItem.from_row(row) for row in rows])
