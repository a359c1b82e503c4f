"""GraphQL for artifacts: versioned files, uploaded with the GraphQL multipart request spec."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from strawberry.file_uploads import Upload

from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.dtus import client_errors, input_to_dict
from concord_core.api.gql.errors import FieldErrorType
from concord_core.api.gql.ids import expect_global_id, to_global_id
from concord_core.api.gql.nodes import Node, register_node
from concord_core.auth.policy import Visibility
from concord_core.db import models
from concord_core.operators import artifacts as ops
from concord_core.operators.errors import OperatorError

strawberry.enum(ops.ArtifactKind)


def content_url(artifact_id: str, version: int) -> str:
    return f"/api/artifacts/{artifact_id}/versions/{version}/content"


@strawberry.type(description="One stored version of an artifact's file.")
class ArtifactVersion:
    version: int
    label: str = strawberry.field(description="For example original, processed, mastered, export.")
    sha256: str
    size: float = strawberry.field(description="Bytes (a Float, since files can pass 2^31).")
    media_type: str
    filename: str | None
    created_at: datetime
    download_url: str = strawberry.field(description="GET this path (with your credentials) for the bytes.")

    @classmethod
    def from_row(cls, row: models.ArtifactVersion) -> ArtifactVersion:
        return cls(
            version=row.version,
            label=row.label,
            sha256=row.blob_sha256,
            size=float(row.size),
            media_type=row.media_type,
            filename=row.filename,
            created_at=row.created_at,
            download_url=content_url(row.artifact_id, row.version),
        )


@strawberry.type(description="A versioned file: audio, image, export and so on. Readable per its visibility.")
class Artifact(Node):
    key: strawberry.Private[str]
    name: str
    kind: ops.ArtifactKind
    visibility: Visibility
    tags: list[str]
    current_version: int
    owner_id: strawberry.ID
    workspace_id: strawberry.ID
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: models.Artifact) -> Artifact:
        return cls(
            id=strawberry.ID(to_global_id("Artifact", row.id)),
            key=row.id,
            name=row.name,
            kind=ops.ArtifactKind(row.kind),
            visibility=Visibility(row.visibility),
            tags=row.tags,
            current_version=row.current_version,
            owner_id=strawberry.ID(to_global_id("User", row.owner_id)),
            workspace_id=strawberry.ID(to_global_id("Workspace", row.workspace_id)),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    @strawberry.field(description="Every version, oldest first.")
    async def versions(self, info: GqlInfo) -> list[ArtifactVersion]:
        return [
            ArtifactVersion.from_row(row)
            for row in await info.context.loaders.artifact_versions.load(self.key)
        ]

    @strawberry.field(description="The newest version, if any was uploaded.")
    async def latest(self, info: GqlInfo) -> ArtifactVersion | None:
        versions = await info.context.loaders.artifact_versions.load(self.key)
        return ArtifactVersion.from_row(versions[-1]) if versions else None


async def load_artifact(info: GqlInfo, key: str) -> Artifact | None:
    try:
        row = await info.context.read(lambda s: ops.get_artifact(info.context.ops, s, key))
    except OperatorError:
        return None
    return Artifact.from_row(row)


register_node("Artifact", load_artifact)


@strawberry.input
class CreateArtifactInput:
    name: str
    kind: ops.ArtifactKind | None = strawberry.UNSET
    visibility: Visibility = Visibility.PRIVATE
    tags: list[str] | None = strawberry.UNSET
    label: str | None = strawberry.UNSET
    media_type: str | None = strawberry.UNSET
    workspace_id: strawberry.ID | None = strawberry.UNSET


@strawberry.input
class UploadArtifactVersionInput:
    artifact_id: strawberry.ID
    label: str | None = strawberry.UNSET
    media_type: str | None = strawberry.UNSET
    expected_version: int | None = strawberry.UNSET


@strawberry.type
class ArtifactPayload:
    artifact: Artifact | None = None
    version: ArtifactVersion | None = None
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


def _upload_details(file: Any, data: dict[str, Any]) -> dict[str, Any]:
    data.setdefault("filename", getattr(file, "filename", None))
    media_type = getattr(file, "content_type", None)
    if "media_type" not in data and media_type:
        data["media_type"] = media_type
    return data


async def _artifact_mutation(info: GqlInfo, work: Any) -> ArtifactPayload:
    try:
        artifact, version = await info.context.run(work)
    except OperatorError as exc:
        return ArtifactPayload(errors=client_errors(exc))
    return ArtifactPayload(
        artifact=Artifact.from_row(artifact), version=ArtifactVersion.from_row(version) if version else None
    )


@strawberry.type
class ArtifactQueries:
    @strawberry.field(
        description="An artifact by ID; null when it does not exist or you cannot read it. "
        "Needs: read on the artifact (per its visibility)."
    )
    async def artifact(self, info: GqlInfo, id: strawberry.ID) -> Artifact | None:
        try:
            key = expect_global_id(id, "Artifact", "artifact")
        except OperatorError:
            return None
        return await load_artifact(info, key)


@strawberry.type
class ArtifactMutations:
    @strawberry.mutation(
        description="Create an artifact from an uploaded file (multipart request). "
        "Needs: editor or owner of the workspace."
    )
    async def create_artifact(
        self, info: GqlInfo, input: CreateArtifactInput, file: Upload
    ) -> ArtifactPayload:
        ctx = info.context.ops

        def work() -> tuple[models.Artifact, models.ArtifactVersion]:
            data = _upload_details(file, input_to_dict(input))
            if "workspace_id" in data:
                data["workspace_id"] = expect_global_id(
                    data["workspace_id"], "Workspace", "workspace", "workspaceId"
                )
            return ops.create_artifact(ctx, data, file.file)  # type: ignore[attr-defined]

        return await _artifact_mutation(info, work)

    @strawberry.mutation(description="Upload a new version of an artifact. Needs: edit on the artifact.")
    async def upload_artifact_version(
        self, info: GqlInfo, input: UploadArtifactVersionInput, file: Upload
    ) -> ArtifactPayload:
        ctx = info.context.ops

        def work() -> tuple[models.Artifact, models.ArtifactVersion]:
            data = _upload_details(file, input_to_dict(input))
            data["artifact_id"] = expect_global_id(data["artifact_id"], "Artifact", "artifact", "artifactId")
            return ops.add_artifact_version(ctx, data, file.file)  # type: ignore[attr-defined]

        return await _artifact_mutation(info, work)

    @strawberry.mutation(description="Change who can see an artifact. Needs: its owner.")
    async def publish_artifact(
        self, info: GqlInfo, id: strawberry.ID, visibility: Visibility
    ) -> ArtifactPayload:
        ctx = info.context.ops

        def work() -> tuple[models.Artifact, None]:
            key = expect_global_id(id, "Artifact", "artifact", "id")
            return ops.publish_artifact(ctx, key, visibility.value), None

        return await _artifact_mutation(info, work)

    @strawberry.mutation(
        description="Export DTUs (with history) as a JSON artifact. Needs: read on each DTU."
    )
    async def export_dtus(
        self, info: GqlInfo, ids: list[strawberry.ID], with_history: bool = True
    ) -> ArtifactPayload:
        ctx = info.context.ops

        def work() -> tuple[models.Artifact, models.ArtifactVersion]:
            keys = [expect_global_id(i, "Dtu", "dtu", f"ids.{n}") for n, i in enumerate(ids)]
            return ops.export_dtus(ctx, keys, with_history=with_history)

        return await _artifact_mutation(info, work)
