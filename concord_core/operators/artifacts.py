"""Artifact operators: create with a first version, upload a new version, edit, publish, export DTUs.

The blob is written to the object store before the transaction (content-addressed, so a retry stores
nothing new); the transaction then records the artifact, its version and the event. A crash in between
leaves an unreferenced blob, never a row pointing at a missing file.
"""

from __future__ import annotations

import enum
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from concord_core.auth.policy import Action, Visibility, WorkspaceTarget, can_read
from concord_core.db.models import Artifact, ArtifactVersion, Dtu, DtuVersion
from concord_core.db.snapshots import (
    artifact_snapshot,
    artifact_version_snapshot,
    dtu_snapshot,
    dtu_version_snapshot,
)
from concord_core.db.types import utcnow
from concord_core.operators.base import Change, OperationContext, check_access, validate, write
from concord_core.operators.errors import ErrorCode, OperatorError, not_found
from concord_core.storage import BlobRef, BlobTooLarge

EXPORT_FORMAT = "concord.dtus.v1"

Label = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$"),
]
MediaType = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=255, pattern=r"^[\w.+-]+/[\w.+-]+(;.*)?$"
    ),
]


class ArtifactKind(enum.StrEnum):
    AUDIO = "audio"
    IMAGE = "image"
    VIDEO = "video"
    DOCUMENT = "document"
    EXPORT = "export"
    OTHER = "other"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class VersionInput(_Strict):
    label: Label = "original"
    media_type: MediaType = "application/octet-stream"
    filename: Annotated[str, StringConstraints(max_length=500)] | None = None


class CreateArtifactInput(VersionInput):
    name: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    kind: ArtifactKind | None = None
    visibility: Visibility = Visibility.PRIVATE
    tags: list[Annotated[str, StringConstraints(to_lower=True, min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=64
    )
    workspace_id: str | None = None

    @field_validator("tags")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return sorted(set(value))


class AddVersionInput(VersionInput):
    artifact_id: str
    expected_version: int | None = Field(None, ge=0)


def _kind_of(media_type: str) -> ArtifactKind:
    major = media_type.split("/", 1)[0]
    return {
        "audio": ArtifactKind.AUDIO,
        "image": ArtifactKind.IMAGE,
        "video": ArtifactKind.VIDEO,
        "text": ArtifactKind.DOCUMENT,
    }.get(major, ArtifactKind.OTHER)


def store_blob(ctx: OperationContext, stream: BinaryIO) -> BlobRef:
    """Blob first: stream the upload into the object store, refusing it past the configured size."""
    try:
        return ctx.store.put_stream(stream, max_bytes=ctx.settings.max_upload_bytes)
    except BlobTooLarge as exc:
        raise OperatorError.single(
            ErrorCode.TOO_LARGE, f"the upload is larger than the limit of {exc.limit} bytes", "file"
        ) from None


def _add_version(
    change: Change, artifact: Artifact, blob: BlobRef, spec: VersionInput, job_id: str | None = None
) -> ArtifactVersion:
    artifact.current_version += 1
    artifact.updated_at = utcnow()
    version = ArtifactVersion(
        artifact_id=artifact.id,
        version=artifact.current_version,
        blob_sha256=blob.sha256,
        size=blob.size,
        media_type=spec.media_type,
        label=spec.label,
        filename=spec.filename,
        actor_id=change.ctx.principal.user_id,
        job_id=job_id,
        metadata_={},
        created_at=artifact.updated_at,
    )
    change.session.add(version)
    change.session.flush()
    change.emit(
        "ARTIFACT_UPLOADED",
        "artifact",
        artifact.id,
        {"artifact": artifact_snapshot(artifact), "version": artifact_version_snapshot(version)},
        artifact.workspace_id,
    )
    change.audit("artifact", artifact.id, artifact.workspace_id, version=version.version, sha256=blob.sha256)
    return version


def _new_artifact(
    change: Change, request: CreateArtifactInput, workspace_id: str, media_type: str
) -> Artifact:
    change.authorize(Action.CREATE, WorkspaceTarget(workspace_id), "workspace", workspace_id)
    now = utcnow()
    artifact = Artifact(
        workspace_id=workspace_id,
        owner_id=change.ctx.principal.user_id,
        name=request.name,
        kind=(request.kind or _kind_of(media_type)).value,
        visibility=request.visibility.value,
        tags=request.tags,
        current_version=0,
        created_at=now,
        updated_at=now,
    )
    change.session.add(artifact)
    change.session.flush()
    change.emit(
        "ARTIFACT_CREATED", "artifact", artifact.id, {"artifact": artifact_snapshot(artifact)}, workspace_id
    )
    return artifact


def create_artifact(
    ctx: OperationContext, data: dict[str, Any], stream: BinaryIO
) -> tuple[Artifact, ArtifactVersion]:
    request = validate(CreateArtifactInput, data)
    workspace_id = ctx.workspace_for(request.workspace_id, "artifact.create")
    with _before_storing(ctx, "artifact.create") as check:
        check.authorize(Action.CREATE, WorkspaceTarget(workspace_id), "workspace", workspace_id)
    blob = store_blob(ctx, stream)
    with write(ctx, "artifact.create") as change:
        artifact = _new_artifact(change, request, workspace_id, request.media_type)
        version = _add_version(change, artifact, blob, request)
    return artifact, version


def add_artifact_version(
    ctx: OperationContext, data: dict[str, Any], stream: BinaryIO, job_id: str | None = None
) -> tuple[Artifact, ArtifactVersion]:
    request = validate(AddVersionInput, data)
    with _before_storing(ctx, "artifact.upload") as check:
        artifact = _load(check.session, request.artifact_id)
        check.authorize(Action.EDIT, artifact, "artifact", artifact.id)
        _expect_version(artifact, request.expected_version)
    blob = store_blob(ctx, stream)
    with write(ctx, "artifact.upload") as change:
        artifact = _load(change.session, request.artifact_id)
        change.authorize(Action.EDIT, artifact, "artifact", artifact.id)
        _expect_version(artifact, request.expected_version)
        version = _add_version(change, artifact, blob, request, job_id)
    return artifact, version


@contextmanager
def _before_storing(ctx: OperationContext, action: str) -> Iterator[Change]:
    """The checks of ``action`` as a dry run (a denial is audited as usual), so that a request refused
    for its IDs, access or version stores no blob; the write itself checks again."""
    with write(ctx, action) as check:
        check.dry_run = True
        yield check


def _expect_version(artifact: Artifact, expected: int | None) -> None:
    if expected is not None and artifact.current_version != expected:
        raise OperatorError.single(
            ErrorCode.CONFLICT,
            f"the artifact is at version {artifact.current_version}, not {expected}",
            "expectedVersion",
        )


def publish_artifact(ctx: OperationContext, artifact_id: str, visibility: str) -> Artifact:
    target = validate(_VisibilityInput, {"visibility": visibility}).visibility
    with write(ctx, "artifact.publish") as change:
        artifact = _load(change.session, artifact_id)
        change.authorize(Action.PUBLISH, artifact, "artifact", artifact.id)
        if artifact.current_version == 0:
            raise OperatorError.single(ErrorCode.VALIDATION, "upload a version before publishing", "id")
        previous = artifact.visibility
        artifact.visibility = target.value
        artifact.updated_at = utcnow()
        change.emit(
            "ARTIFACT_PUBLISHED",
            "artifact",
            artifact.id,
            {"artifact": artifact_snapshot(artifact), "previous_visibility": previous},
            artifact.workspace_id,
        )
        change.audit("artifact", artifact.id, artifact.workspace_id, visibility=target.value)
    return artifact


class _VisibilityInput(_Strict):
    visibility: Visibility


def _load(session: Session, artifact_id: str) -> Artifact:
    artifact = session.scalar(select(Artifact).where(Artifact.id == artifact_id).with_for_update())
    if artifact is None:
        raise not_found("artifact")
    return artifact


def get_artifact(ctx: OperationContext, session: Session, artifact_id: str) -> Artifact:
    """An artifact the principal may read; unknown and unreadable ids get the same NOT_FOUND."""
    artifact = session.get(Artifact, artifact_id)
    if artifact is None or not can_read(ctx.principal, artifact):
        raise not_found("artifact")
    return artifact


def get_version(ctx: OperationContext, session: Session, artifact_id: str, version: int) -> ArtifactVersion:
    get_artifact(ctx, session, artifact_id)
    row = session.get(ArtifactVersion, (artifact_id, version))
    if row is None:
        raise not_found("artifact version")
    return row


def export_dtus(
    ctx: OperationContext, dtu_ids: list[str], *, with_history: bool = True, name: str | None = None
) -> tuple[Artifact, ArtifactVersion]:
    """Write the DTUs (and their history) as one JSON document, stored as a new export artifact."""
    if not dtu_ids:
        raise OperatorError.single(ErrorCode.VALIDATION, "name at least one DTU to export", "ids")
    if len(dtu_ids) > 10_000:
        raise OperatorError.single(ErrorCode.VALIDATION, "export at most 10,000 DTUs at once", "ids")
    with ctx.db.read() as session:
        rows = {row.id: row for row in session.scalars(select(Dtu).where(Dtu.id.in_(dtu_ids)))}
    for index, dtu_id in enumerate(dtu_ids):
        if dtu_id not in rows:
            raise not_found("dtu", f"ids.{index}")
        # An unreadable DTU is refused (and audited) by the policy, with the error an unknown id gets.
        check_access(ctx, "dtu.export", Action.READ, rows[dtu_id], "dtu", dtu_id, f"ids.{index}")
    workspace_id = ctx.workspace_for(None, "dtu.export")
    with ctx.db.read() as session:
        document: dict[str, Any] = {"format": EXPORT_FORMAT, "exported_at": utcnow().isoformat(), "dtus": []}
        for dtu_id in dtu_ids:
            entry: dict[str, Any] = {"dtu": dtu_snapshot(rows[dtu_id])}
            if with_history:
                versions = session.scalars(
                    select(DtuVersion).where(DtuVersion.dtu_id == dtu_id).order_by(DtuVersion.version)
                )
                entry["versions"] = [dtu_version_snapshot(v) for v in versions]
            document["dtus"].append(entry)
    body = json.dumps(document, ensure_ascii=False, indent=1).encode()
    request = CreateArtifactInput(
        name=name or f"DTU export ({len(dtu_ids)})",
        kind=ArtifactKind.EXPORT,
        label="export",
        media_type="application/json",
        filename="dtus-export.json",
    )
    blob = store_blob(ctx, io.BytesIO(body))
    with write(ctx, "dtu.export") as change:
        artifact = _new_artifact(change, request, workspace_id, request.media_type)
        version = _add_version(change, artifact, blob, request)
        change.audit("artifact", artifact.id, workspace_id, dtus=len(dtu_ids))
    return artifact, version


def add_job_output(
    change: Change,
    *,
    job_id: str,
    workspace_id: str,
    blob: BlobRef,
    name: str,
    media_type: str,
    label: str,
    artifact_id: str | None = None,
) -> tuple[Artifact, ArtifactVersion]:
    """A job's output inside the caller's change (which also links it to the job): a new artifact in
    ``workspace_id`` (its kind from the media type), or a new version of ``artifact_id``. The blob is
    already stored."""
    request = validate(
        CreateArtifactInput,
        {"name": name, "label": label, "media_type": media_type, "workspace_id": workspace_id},
    )
    if artifact_id is None:
        artifact = _new_artifact(change, request, workspace_id, request.media_type)
    else:
        artifact = _load(change.session, artifact_id)
        change.authorize(Action.EDIT, artifact, "artifact", artifact.id)
    return artifact, _add_version(change, artifact, blob, request, job_id)
