"""Rows as plain JSON: what events carry as "the full new state", and what replay compares."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from concord_core.db.models import Artifact, ArtifactVersion, Dtu, DtuVersion, LensItem

DTU_FIELDS = (
    "title",
    "human",
    "core",
    "machine",
    "tags",
    "tier",
    "dtu_type",
    "visibility",
    "citation_mode",
    "citations",
    "status",
    "merged_into_id",
    "content_hash",
)


def _time(value: datetime) -> str:
    return value.isoformat()


def dtu_snapshot(dtu: Dtu) -> dict[str, Any]:
    state = {name: getattr(dtu, name) for name in DTU_FIELDS}
    state.update(
        id=dtu.id,
        workspace_id=dtu.workspace_id,
        owner_id=dtu.owner_id,
        version=dtu.version,
        created_at=_time(dtu.created_at),
        updated_at=_time(dtu.updated_at),
    )
    return state


def dtu_version_snapshot(row: DtuVersion) -> dict[str, Any]:
    state = {name: getattr(row, name) for name in DTU_FIELDS}
    state.update(
        dtu_id=row.dtu_id,
        version=row.version,
        workspace_id=row.workspace_id,
        owner_id=row.owner_id,
        actor_id=row.actor_id,
        change=row.change,
        created_at=_time(row.created_at),
    )
    return state


def artifact_snapshot(artifact: Artifact) -> dict[str, Any]:
    return {
        "id": artifact.id,
        "workspace_id": artifact.workspace_id,
        "owner_id": artifact.owner_id,
        "name": artifact.name,
        "kind": artifact.kind,
        "visibility": artifact.visibility,
        "tags": artifact.tags,
        "current_version": artifact.current_version,
        "created_at": _time(artifact.created_at),
        "updated_at": _time(artifact.updated_at),
    }


def artifact_version_snapshot(row: ArtifactVersion) -> dict[str, Any]:
    return {
        "artifact_id": row.artifact_id,
        "version": row.version,
        "blob_sha256": row.blob_sha256,
        "size": row.size,
        "media_type": row.media_type,
        "label": row.label,
        "filename": row.filename,
        "actor_id": row.actor_id,
        "job_id": row.job_id,
        "metadata": row.metadata_,
        "created_at": _time(row.created_at),
    }


def lens_item_snapshot(item: LensItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "lens_id": item.lens_id,
        "item_type": item.item_type,
        "workspace_id": item.workspace_id,
        "owner_id": item.owner_id,
        "visibility": item.visibility,
        "status": item.status,
        "data": item.data,
        "source_kind": item.source_kind,
        "source_id": item.source_id,
        "version": item.version,
        "created_at": _time(item.created_at),
        "updated_at": _time(item.updated_at),
    }
