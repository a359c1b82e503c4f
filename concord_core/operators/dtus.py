"""DTU operators: create, edit, merge, dedupe, export and publish (plan D1).

Each one follows the write path in :mod:`concord_core.operators.base`: every change writes the DTU row, a
full ``dtu_versions`` row, one event carrying the full new state, and an audit entry, in one transaction.
"""

from __future__ import annotations

import enum
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.orm import Session

from concord_core.auth.policy import AccessDenied, Action, Visibility, WorkspaceTarget, authorize, can_read
from concord_core.browse.indexes import index_inserted
from concord_core.db.engine import pipelined
from concord_core.db.models import Dtu, DtuVersion
from concord_core.db.snapshots import DTU_FIELDS, dtu_snapshot
from concord_core.db.types import new_id, utcnow
from concord_core.events.log import canonical_json
from concord_core.operators.base import Change, OperationContext, validate, write
from concord_core.operators.errors import ErrorCode, FieldError, OperatorError, not_found

Text = Annotated[str, StringConstraints(max_length=20_000)]
Line = Annotated[str, StringConstraints(max_length=2_000)]
Tag = Annotated[
    str,
    BeforeValidator(lambda value: value.strip().lower() if isinstance(value, str) else value),
    StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9 _./:+-]*$"),
]


class Tier(enum.StrEnum):
    REGULAR = "regular"
    MEGA = "mega"
    HYPER = "hyper"
    SHADOW = "shadow"


class CitationMode(enum.StrEnum):
    ORIGINAL = "original"  # cites nothing
    CITING = "citing"  # may cite
    DERIVATIVE = "derivative"  # must cite at least one source


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class HumanLayer(_Strict):
    summary: Text = ""
    bullets: list[Line] = Field(default_factory=list, max_length=200)
    examples: list[Text] = Field(default_factory=list, max_length=100)


class CoreLayer(_Strict):
    definitions: list[Text] = Field(default_factory=list, max_length=200)
    invariants: list[Text] = Field(default_factory=list, max_length=200)
    examples: list[Text] = Field(default_factory=list, max_length=200)
    claims: list[Text] = Field(default_factory=list, max_length=200)
    next_actions: list[Text] = Field(default_factory=list, max_length=200)


class DtuFields(_Strict):
    """Fields an edit may change; every one optional so an edit sends only what changes."""

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)] | None = (
        None
    )
    human: HumanLayer | None = None
    core: CoreLayer | None = None
    machine: dict[str, Any] | None = None
    tags: list[Tag] | None = Field(None, max_length=64)
    tier: Tier | None = None
    dtu_type: (
        Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")] | None
    ) = None
    citation_mode: CitationMode | None = None
    citations: list[Annotated[str, StringConstraints(max_length=64)]] | None = Field(None, max_length=500)

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, value: list[str] | None) -> list[str] | None:
        return sorted(set(value)) if value is not None else None

    @field_validator("machine")
    @classmethod
    def _machine_is_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(canonical_json(value)) > 200_000:
            raise ValueError("the machine layer is larger than 200,000 characters")
        return value


class CreateDtuInput(DtuFields):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    visibility: Visibility = Visibility.PRIVATE
    workspace_id: str | None = None


class EditDtuInput(DtuFields):
    id: str
    expected_version: int = Field(ge=1)


DEFAULTS: dict[str, Any] = {
    "human": HumanLayer().model_dump(),
    "core": CoreLayer().model_dump(),
    "machine": {},
    "tags": [],
    "tier": Tier.REGULAR.value,
    "dtu_type": "note",
    "citation_mode": CitationMode.ORIGINAL.value,
    "citations": [],
}


def content_hash(state: dict[str, Any]) -> str:
    """What makes two DTUs duplicates: the same title, layers and type (tags and visibility aside)."""
    content = {key: state[key] for key in ("title", "human", "core", "machine", "dtu_type")}
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def _load(session: Session, dtu_id: str, *, for_update: bool = True) -> Dtu:
    query = select(Dtu).where(Dtu.id == dtu_id)
    dtu = session.scalar(query.with_for_update() if for_update else query)
    if dtu is None:
        raise not_found("dtu")
    return dtu


def _check_citations(change: Change, dtu_id: str, mode: str, citations: list[str]) -> list[FieldError]:
    errors = []
    if mode == CitationMode.ORIGINAL and citations:
        errors.append(FieldError("citations", ErrorCode.VALIDATION, "an original DTU cites nothing"))
    if mode == CitationMode.DERIVATIVE and not citations:
        errors.append(
            FieldError("citations", ErrorCode.VALIDATION, "a derivative DTU cites at least one DTU")
        )
    if dtu_id in citations:
        errors.append(FieldError("citations", ErrorCode.VALIDATION, "a DTU cannot cite itself"))
    if len(set(citations)) != len(citations):
        errors.append(FieldError("citations", ErrorCode.VALIDATION, "a DTU is cited twice"))
    others = sorted(set(citations) - {dtu_id})
    found = (
        {row.id: row for row in change.session.scalars(select(Dtu).where(Dtu.id.in_(others)))}
        if others
        else {}
    )
    for index, cited in enumerate(citations):
        row = found.get(cited)
        if cited != dtu_id and (row is None or not can_read(change.ctx.principal, row)):
            errors.append(FieldError(f"citations.{index}", ErrorCode.NOT_FOUND, "cited dtu not found"))
    return errors


_DTUS = Dtu.metadata.tables["dtus"]
_VERSIONS = Dtu.metadata.tables["dtu_versions"]
_CITATIONS = Dtu.metadata.tables["dtu_citations"]
# Built once: SQLAlchemy then finds their compiled form in its cache without building a statement per write.
_INSERT_DTU = insert(_DTUS)
_INSERT_VERSION = insert(_VERSIONS)
_INSERT_CITATIONS = insert(_CITATIONS)
_DELETE_CITATIONS = delete(_CITATIONS).where(_CITATIONS.c.citing_id == bindparam("citing_id"))


def _record(change: Change, dtu: Dtu, change_kind: str, event_type: str, **extra: Any) -> None:
    """Write the version row, the event with the full new state, and the audit target.

    The version and citation rows are Core inserts: the unit of work would only add bookkeeping. A DTU
    changed through the session is flushed first, so those rows follow its own."""
    change.session.flush()
    connection = change.connection
    connection.execute(
        _INSERT_VERSION,
        {
            "dtu_id": dtu.id,
            "version": dtu.version,
            "workspace_id": dtu.workspace_id,
            "owner_id": dtu.owner_id,
            "actor_id": change.ctx.principal.user_id,
            "change": change_kind,
            "created_at": dtu.updated_at,
            **{name: getattr(dtu, name) for name in DTU_FIELDS},
        },
    )
    if change_kind != "created":  # a DTU created in this transaction has no citation rows yet
        connection.execute(_DELETE_CITATIONS, {"citing_id": dtu.id})
    if dtu.citations:
        connection.execute(
            _INSERT_CITATIONS,
            [{"citing_id": dtu.id, "cited_id": c} for c in dtu.citations],
        )
    change.emit(
        event_type,
        "dtu",
        dtu.id,
        {"dtu": dtu_snapshot(dtu), "change": change_kind, **extra},
        dtu.workspace_id,
    )
    change.audit("dtu", dtu.id, dtu.workspace_id, version=dtu.version, **extra)


def create_dtu(ctx: OperationContext, data: dict[str, Any]) -> Dtu:
    request = validate(CreateDtuInput, data)
    workspace_id = ctx.workspace_for(request.workspace_id, "dtu.create")
    fields = request.model_dump(exclude_none=True, exclude={"workspace_id", "visibility"}, mode="json")
    state = {**DEFAULTS, **fields}
    with write(ctx, "dtu.create") as change:
        change.authorize(Action.CREATE, WorkspaceTarget(workspace_id), "workspace", workspace_id)
        now = utcnow()
        # Never added to the session: its row is one Core insert (below), and this object carries the
        # values back to the caller exactly as the unit of work would have left them.
        dtu = Dtu(
            id=new_id(),
            workspace_id=workspace_id,
            owner_id=ctx.principal.user_id,
            visibility=request.visibility.value,
            version=1,
            created_at=now,
            updated_at=now,
            status="active",
            merged_into_id=None,
            content_hash=content_hash(state),
            **state,
        )
        errors = _check_citations(change, dtu.id, dtu.citation_mode, dtu.citations)
        if errors:
            raise OperatorError(errors)
        connection = change.connection
        # Core statements alone (the session holds no changes to flush), the audit row with them: one round
        # trip on PostgreSQL.
        row = {column.key: getattr(dtu, column.key) for column in _DTUS.columns}
        with pipelined(connection):
            connection.execute(_INSERT_DTU, row)
            index_inserted(connection, dtu)
            _record(change, dtu, "created", "DTU_CREATED")
            change.write_audit()
    return dtu


def _bump(dtu: Dtu, updates: dict[str, Any]) -> None:
    for name, value in updates.items():
        setattr(dtu, name, value)
    dtu.content_hash = content_hash({name: getattr(dtu, name) for name in DTU_FIELDS})
    dtu.version += 1
    dtu.updated_at = utcnow()


def _expect_active(dtu: Dtu, field: str = "id") -> None:
    if dtu.status != "active":
        raise OperatorError.single(
            ErrorCode.CONFLICT, f"this DTU was merged into {dtu.merged_into_id}", field
        )


def edit_dtu(ctx: OperationContext, data: dict[str, Any]) -> Dtu:
    request = validate(EditDtuInput, data)
    updates = request.model_dump(exclude_none=True, exclude={"id", "expected_version"}, mode="json")
    with write(ctx, "dtu.edit") as change:
        dtu = _load(change.session, request.id)
        change.authorize(Action.EDIT, dtu, "dtu", dtu.id)
        if dtu.version != request.expected_version:
            raise OperatorError.single(
                ErrorCode.CONFLICT,
                f"the DTU is at version {dtu.version}, not {request.expected_version}; reload and retry",
                "expectedVersion",
            )
        _expect_active(dtu)
        _bump(dtu, updates)
        errors = _check_citations(change, dtu.id, dtu.citation_mode, dtu.citations)
        if errors:
            raise OperatorError(errors)
        _record(change, dtu, "edited", "DTU_EDITED")
    return dtu


def publish_dtu(ctx: OperationContext, dtu_id: str, visibility: str) -> Dtu:
    """Change who can see a DTU, after checking it is fit to be seen that widely."""
    target = validate(_Visibility, {"visibility": visibility}).visibility
    with write(ctx, "dtu.publish") as change:
        dtu = _load(change.session, dtu_id)
        change.authorize(Action.PUBLISH, dtu, "dtu", dtu.id)
        _expect_active(dtu)
        errors = _check_citations(change, dtu.id, dtu.citation_mode, dtu.citations)
        if target in (Visibility.PUBLIC, Visibility.UNLISTED):
            if not (dtu.human.get("summary") or dtu.core.get("definitions") or dtu.core.get("claims")):
                errors.append(
                    FieldError(
                        "id", ErrorCode.VALIDATION, "add a summary, definition or claim before publishing"
                    )
                )
            cited = change.session.scalars(select(Dtu).where(Dtu.id.in_(dtu.citations))).all()
            if any(row.visibility not in (Visibility.PUBLIC, Visibility.UNLISTED) for row in cited):
                errors.append(FieldError("id", ErrorCode.VALIDATION, "publish the DTUs this one cites first"))
        if errors:
            raise OperatorError(errors)
        before = dtu.visibility
        _bump(dtu, {"visibility": target.value})
        _record(change, dtu, "published", "DTU_PUBLISHED", previous_visibility=before)
    return dtu


class _Visibility(_Strict):
    visibility: Visibility


def _merge_lists(*lists: list[Any]) -> list[Any]:
    merged: list[Any] = []
    for items in lists:
        merged.extend(item for item in items if item not in merged)
    return merged


def _merge_into(change: Change, target: Dtu, sources: list[Dtu]) -> None:
    """Fold ``sources`` into ``target``; each source keeps a pointer to it (lineage)."""
    absorbed = {target.id, *(s.id for s in sources)}
    human, core = dict(target.human), dict(target.core)
    for source in sources:
        human["summary"] = human.get("summary") or source.human.get("summary", "")
        for key in ("bullets", "examples"):
            human[key] = _merge_lists(human.get(key, []), source.human.get(key, []))
        for key in CoreLayer.model_fields:
            core[key] = _merge_lists(core.get(key, []), source.core.get(key, []))
    machine: dict[str, Any] = {}
    for source in reversed(sources):
        machine.update(source.machine)
    machine.update(target.machine)
    citations = [
        c for c in _merge_lists(target.citations, *(s.citations for s in sources)) if c not in absorbed
    ]
    _bump(
        target,
        {
            "human": human,
            "core": core,
            "machine": machine,
            "tags": sorted(set(target.tags).union(*(s.tags for s in sources))),
            "citations": citations,
            # A derivative whose only sources were absorbed no longer cites anything it must.
            "citation_mode": "citing"
            if target.citation_mode == "derivative" and not citations
            else target.citation_mode,
        },
    )
    merged_from = [s.id for s in sources]
    _record(change, target, "merged", "DTU_MERGED", merged_from=merged_from)
    for source in sources:
        _bump(source, {"status": "merged", "merged_into_id": target.id})
        _record(change, source, "merged_away", "DTU_MERGED_AWAY", merged_into=target.id)


def merge_dtus(ctx: OperationContext, target_id: str, source_ids: list[str]) -> Dtu:
    if not source_ids:
        raise OperatorError.single(ErrorCode.VALIDATION, "name at least one DTU to merge", "sourceIds")
    if target_id in source_ids or len(set(source_ids)) != len(source_ids):
        raise OperatorError.single(
            ErrorCode.VALIDATION, "each DTU may appear once, and not as the target", "sourceIds"
        )
    with write(ctx, "dtu.merge") as change:
        target = _load(change.session, target_id)
        change.authorize(Action.EDIT, target, "dtu", target.id)
        _expect_active(target, "targetId")
        sources = []
        for index, source_id in enumerate(source_ids):
            source = _load(change.session, source_id)
            change.authorize(Action.EDIT, source, "dtu", source.id)
            _expect_active(source, f"sourceIds.{index}")
            if source.workspace_id != target.workspace_id:
                raise OperatorError.single(
                    ErrorCode.VALIDATION, "only DTUs of one workspace can be merged", f"sourceIds.{index}"
                )
            sources.append(source)
        _merge_into(change, target, sources)
    return target


@dataclass(frozen=True)
class DedupeGroup:
    kept_id: str
    merged_ids: list[str]


def dedupe_dtus(
    ctx: OperationContext, workspace_id: str | None, *, dry_run: bool = False
) -> list[DedupeGroup]:
    """Find active DTUs with the same content hash and merge each group into its oldest member."""
    workspace = ctx.workspace_for(workspace_id, "dtu.dedupe")
    with write(ctx, "dtu.dedupe") as change:
        change.dry_run = dry_run
        change.authorize(Action.CREATE, WorkspaceTarget(workspace), "workspace", workspace)
        rows = change.session.scalars(
            select(Dtu)
            .where(Dtu.workspace_id == workspace, Dtu.status == "active")
            .order_by(Dtu.created_at, Dtu.id)
            .with_for_update()
        ).all()
        by_hash: dict[str, list[Dtu]] = defaultdict(list)
        for row in rows:
            if _may_edit(change, row):
                by_hash[row.content_hash].append(row)
        groups = [members for members in by_hash.values() if len(members) > 1]
        result = [DedupeGroup(g[0].id, [m.id for m in g[1:]]) for g in groups]
        if not dry_run:
            for members in groups:
                _merge_into(change, members[0], members[1:])
        change.audit("workspace", workspace, workspace, groups=len(result), dry_run=dry_run)
    return result


def _may_edit(change: Change, dtu: Dtu) -> bool:
    try:
        authorize(change.ctx.principal, Action.EDIT, dtu)
    except AccessDenied:
        return False
    return True


def get_dtu(ctx: OperationContext, session: Session, dtu_id: str) -> Dtu:
    """A DTU the principal may read; unknown and unreadable ids get the same NOT_FOUND."""
    dtu = session.get(Dtu, dtu_id)
    if dtu is None or not can_read(ctx.principal, dtu):
        raise not_found("dtu")
    return dtu


def history(session: Session, dtu_id: str) -> list[DtuVersion]:
    return list(
        session.scalars(select(DtuVersion).where(DtuVersion.dtu_id == dtu_id).order_by(DtuVersion.version))
    )
