"""Lens item operators: any lens stores items of its declared data types without tables of its own.

Item data is validated against the data type's JSON Schema from the lens manifest (every violation is
reported); each change writes the row, one event with the full new state, and an audit entry.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from concord_core.auth.policy import Action, Visibility, WorkspaceTarget, can_read
from concord_core.db.models import Artifact, Dtu, LensItem
from concord_core.db.snapshots import lens_item_snapshot
from concord_core.db.types import utcnow
from concord_core.events.log import canonical_json
from concord_core.operators.base import Change, OperationContext, validate, write
from concord_core.operators.errors import ErrorCode, FieldError, OperatorError, not_found
from concord_core.plugins.registry import LensRegistry

Status = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,31}$")]
MAX_DATA_CHARS = 1_000_000
SEED_NAMESPACE = uuid.UUID("6f9d1f4e-6a57-4c1e-9a3e-0b7c1b2f5a10")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateItemInput(_Strict):
    lens_id: str
    item_type: str
    data: dict[str, Any]
    visibility: Visibility = Visibility.PRIVATE
    workspace_id: str | None = None


class UpdateItemInput(_Strict):
    id: str
    data: dict[str, Any]
    expected_version: int = Field(ge=1)


class StatusInput(_Strict):
    id: str
    status: Status
    expected_version: int = Field(ge=1)


def _registry(ctx: OperationContext) -> LensRegistry:
    if ctx.lenses is None:
        raise RuntimeError("lens items need the lens registry in the operation context")
    return ctx.lenses


def _validator(ctx: OperationContext, lens_id: str, item_type: str) -> Draft202012Validator:
    registry = _registry(ctx)
    if registry.get(lens_id) is None:
        raise OperatorError.single(ErrorCode.NOT_FOUND, f"no active lens {lens_id!r}", "lensId")
    validator = registry.item_validator(lens_id, item_type)
    if validator is None:
        raise OperatorError.single(
            ErrorCode.VALIDATION, f"lens {lens_id!r} has no data type {item_type!r}", "type"
        )
    return validator


def check_data(validator: Draft202012Validator, data: dict[str, Any]) -> None:
    """Raise one VALIDATION error per schema violation, each naming the path inside ``data``."""
    if len(canonical_json(data)) > MAX_DATA_CHARS:
        raise OperatorError.single(
            ErrorCode.VALIDATION, f"data is larger than {MAX_DATA_CHARS} characters", "data"
        )
    errors = [
        FieldError(
            "data" + "".join(f".{part}" for part in error.absolute_path), ErrorCode.VALIDATION, error.message
        )
        for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if errors:
        raise OperatorError(errors)


def _record(change: Change, item: LensItem, event_type: str, **extra: Any) -> None:
    change.session.flush()
    change.emit(
        event_type, "lens_item", item.id, {"item": lens_item_snapshot(item), **extra}, item.workspace_id
    )
    change.audit("lens_item", item.id, item.workspace_id, lens_id=item.lens_id, version=item.version, **extra)


def _new_item(
    change: Change,
    lens_id: str,
    item_type: str,
    data: dict[str, Any],
    workspace_id: str,
    visibility: str,
    source: tuple[str, str] | None = None,
) -> LensItem:
    now = utcnow()
    item = LensItem(
        lens_id=lens_id,
        item_type=item_type,
        workspace_id=workspace_id,
        owner_id=change.ctx.principal.user_id,
        visibility=visibility,
        status="active",
        data=data,
        version=1,
        created_at=now,
        updated_at=now,
        source_kind=source[0] if source else None,
        source_id=source[1] if source else None,
    )
    change.session.add(item)
    _record(change, item, "LENS_ITEM_CREATED")
    return item


def create_item(ctx: OperationContext, data: dict[str, Any]) -> LensItem:
    request = validate(CreateItemInput, data)
    check_data(_validator(ctx, request.lens_id, request.item_type), request.data)
    workspace_id = ctx.workspace_for(request.workspace_id, "lens_item.create")
    with write(ctx, "lens_item.create") as change:
        change.authorize(Action.CREATE, WorkspaceTarget(workspace_id), "workspace", workspace_id)
        return _new_item(
            change, request.lens_id, request.item_type, request.data, workspace_id, request.visibility.value
        )


def _load(change: Change, item_id: str, expected_version: int) -> LensItem:
    item = change.session.scalar(select(LensItem).where(LensItem.id == item_id).with_for_update())
    if item is None:
        raise not_found("lens item")
    change.authorize(Action.EDIT, item, "lens_item", item.id)
    if item.version != expected_version:
        raise OperatorError.single(
            ErrorCode.CONFLICT,
            f"the item is at version {item.version}, not {expected_version}; reload and retry",
            "expectedVersion",
        )
    return item


def _bump(item: LensItem) -> None:
    item.version += 1
    item.updated_at = utcnow()


def update_item(ctx: OperationContext, data: dict[str, Any]) -> LensItem:
    request = validate(UpdateItemInput, data)
    with write(ctx, "lens_item.update") as change:
        item = _load(change, request.id, request.expected_version)
        check_data(_validator(ctx, item.lens_id, item.item_type), request.data)
        item.data = request.data
        _bump(item)
        _record(change, item, "LENS_ITEM_UPDATED")
    return item


def set_item_status(ctx: OperationContext, data: dict[str, Any]) -> LensItem:
    request = validate(StatusInput, data)
    with write(ctx, "lens_item.status") as change:
        item = _load(change, request.id, request.expected_version)
        previous = item.status
        item.status = request.status
        _bump(item)
        _record(change, item, "LENS_ITEM_STATUS_CHANGED", previous_status=previous)
    return item


def delete_item(ctx: OperationContext, item_id: str, expected_version: int) -> str:
    with write(ctx, "lens_item.delete") as change:
        item = _load(change, item_id, expected_version)
        change.emit(
            "LENS_ITEM_DELETED", "lens_item", item.id, {"id": item.id, "deleted": True}, item.workspace_id
        )
        change.audit("lens_item", item.id, item.workspace_id, lens_id=item.lens_id)
        change.session.delete(item)
    return item_id


SourceKind = Literal["dtu", "artifact"]


def _sync_type(ctx: OperationContext, lens_id: str, kind: str, item_type: str | None) -> str:
    lens = _registry(ctx).get(lens_id)
    if lens is None:
        raise OperatorError.single(ErrorCode.NOT_FOUND, f"no active lens {lens_id!r}", "lensId")
    for entry in (lens.manifest or {}).get("dataTypes", []):
        if kind in entry.get("syncFrom", []) and item_type in (None, entry["name"]):
            return str(entry["name"])
    raise OperatorError.single(
        ErrorCode.VALIDATION,
        f"lens {lens_id!r} accepts no {kind}s" + (f" as {item_type!r}" if item_type else ""),
        "type",
    )


def sync_to_lens(
    ctx: OperationContext, lens_id: str, sources: list[tuple[SourceKind, str]], item_type: str | None = None
) -> list[LensItem]:
    """Map DTUs or artifacts into a lens; a source already mapped returns its existing item."""
    if not sources:
        raise OperatorError.single(ErrorCode.VALIDATION, "name at least one DTU or artifact", "ids")
    types = {kind: _sync_type(ctx, lens_id, kind, item_type) for kind in {kind for kind, _ in sources}}
    try:
        return _sync(ctx, lens_id, sources, types)
    except IntegrityError:
        # Someone synced one of these sources at the same moment; now it exists, so this is a repeat.
        return _sync(ctx, lens_id, sources, types)


def _sync(
    ctx: OperationContext, lens_id: str, sources: list[tuple[SourceKind, str]], types: dict[SourceKind, str]
) -> list[LensItem]:
    with write(ctx, "lens.sync") as change:
        items = []
        for index, (kind, source_id) in enumerate(sources):
            row: Dtu | Artifact | None = (
                change.session.get(Dtu, source_id)
                if kind == "dtu"
                else change.session.get(Artifact, source_id)
            )
            if row is None:
                raise not_found(kind, f"ids.{index}")
            # Unreadable sources are refused (and audited) by the policy, with the error unknown ids get.
            change.authorize(Action.READ, row, kind, source_id, f"ids.{index}")
            existing = change.session.scalar(
                select(LensItem).where(
                    LensItem.lens_id == lens_id, LensItem.source_kind == kind, LensItem.source_id == source_id
                )
            )
            if existing is not None:
                items.append(existing)
                continue
            change.authorize(Action.CREATE, WorkspaceTarget(row.workspace_id), "workspace", row.workspace_id)
            title = row.title if isinstance(row, Dtu) else row.name
            data = {"title": title, "sourceKind": kind, "sourceId": source_id}
            check_data(_validator(ctx, lens_id, types[kind]), data)
            items.append(
                _new_item(
                    change, lens_id, types[kind], data, row.workspace_id, row.visibility, (kind, source_id)
                )
            )
        change.audit("lens", lens_id, None, lens_id=lens_id, synced=len(items))
        if not change.events:
            # Every source was synced before: a repeat is a read, so it writes nothing (not even an audit
            # entry). Detached first, the items keep their loaded state through the rollback.
            change.session.expunge_all()
            change.dry_run = True
    return items


def seed_items(ctx: OperationContext) -> int:
    """Create the seed items manifests declare (development mode only; idempotent). Returns how many."""
    workspace_id = ctx.workspace_for(None, "lens_item.seed")
    created = 0
    for lens in _registry(ctx).active:
        for entry in (lens.manifest or {}).get("dataTypes", []):
            for index, data in enumerate(entry.get("seed", [])):
                seed_id = str(uuid.uuid5(SEED_NAMESPACE, f"{lens.lens_id}/{entry['name']}/{index}"))
                with ctx.db.read() as session:
                    if session.scalar(
                        select(LensItem.id).where(
                            LensItem.source_kind == "seed", LensItem.source_id == seed_id
                        )
                    ):
                        continue
                with write(ctx, "lens_item.seed") as change:
                    change.authorize(Action.CREATE, WorkspaceTarget(workspace_id), "workspace", workspace_id)
                    _new_item(
                        change,
                        lens.lens_id,
                        entry["name"],
                        data,
                        workspace_id,
                        Visibility.PRIVATE.value,
                        ("seed", seed_id),
                    )
                created += 1
    return created


def get_item(ctx: OperationContext, session: Session, item_id: str) -> LensItem:
    item = session.get(LensItem, item_id)
    if item is None or not can_read(ctx.principal, item):
        raise not_found("lens item")
    return item
