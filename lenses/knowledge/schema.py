"""GraphQL the knowledge lens adds: the citation graph around a DTU, and a Markdown export."""

from __future__ import annotations

import io

import strawberry
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from concord_core.api.gql.context import GqlInfo
from concord_core.api.gql.dtus import Dtu
from concord_core.api.gql.errors import FieldErrorType, payload_errors
from concord_core.api.gql.ids import expect_global_id, to_global_id
from concord_core.auth.policy import Action, can_read
from concord_core.db import models
from concord_core.operators.artifacts import create_artifact
from concord_core.operators.base import check_access
from concord_core.operators.dtus import get_dtu
from concord_core.operators.errors import ErrorCode, OperatorError, not_found
from lenses.knowledge.markdown import render

MAX_DEPTH = 3
MAX_NODES = 200
#: The audit action of a refused Markdown export (an allowed one is audited as the artifact it creates).
EXPORT_ACTION = "knowledge.export_markdown"


@strawberry.type(description="One citation: `from` cites `to`.")
class KnowledgeCitation:
    from_id: strawberry.ID
    to_id: strawberry.ID


@strawberry.type(description="The DTUs around one DTU, following citations both ways, that you can read.")
class KnowledgeCitationGraph:
    nodes: list[Dtu]
    edges: list[KnowledgeCitation]
    truncated: bool


def citation_graph(session: Session, info: GqlInfo, root_key: str, depth: int) -> KnowledgeCitationGraph:
    principal = info.context.principal
    root = get_dtu(info.context.ops, session, root_key)
    seen = {root.id: root}
    edges: set[tuple[str, str]] = set()
    frontier = {root.id}
    truncated = False
    for _ in range(depth):
        table = models.DtuCitation
        links = session.execute(
            select(table.citing_id, table.cited_id).where(
                or_(table.citing_id.in_(frontier), table.cited_id.in_(frontier))
            )
        ).all()
        wanted = {key for link in links for key in link} - set(seen)
        rows = {row.id: row for row in session.scalars(select(models.Dtu).where(models.Dtu.id.in_(wanted)))}
        frontier = set()
        for key, row in rows.items():
            if not can_read(principal, row):
                continue
            if len(seen) >= MAX_NODES:
                truncated = True
                break
            seen[key] = row
            frontier.add(key)
        edges |= {(a, b) for a, b in links if a in seen and b in seen}
        if not frontier:
            break
    return KnowledgeCitationGraph(
        nodes=[Dtu.from_row(row) for row in seen.values()],
        edges=[
            KnowledgeCitation(
                from_id=strawberry.ID(to_global_id("Dtu", a)), to_id=strawberry.ID(to_global_id("Dtu", b))
            )
            for a, b in sorted(edges)
        ],
        truncated=truncated,
    )


@strawberry.type
class KnowledgeQueries:
    @strawberry.field(
        description="The citation graph around a DTU, up to `depth` (at most 3) links away. "
        "Needs: read on the DTU; nodes you cannot read are left out."
    )
    async def knowledge_citation_graph(
        self, info: GqlInfo, id: strawberry.ID, depth: int = 1
    ) -> KnowledgeCitationGraph | None:
        if not 1 <= depth <= MAX_DEPTH:
            raise OperatorError.single(
                ErrorCode.VALIDATION, f"depth must be between 1 and {MAX_DEPTH}", "depth"
            )
        try:
            key = expect_global_id(id, "Dtu", "dtu", "id")
            return await info.context.read(citation_graph, info, key, depth)
        except OperatorError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return None
            raise


@strawberry.type
class KnowledgeExportPayload:
    artifact_id: strawberry.ID | None = None
    errors: list[FieldErrorType] = strawberry.field(default_factory=list)


@strawberry.type
class KnowledgeMutations:
    @strawberry.mutation(
        description="Export DTUs as one Markdown artifact. Needs: read on each DTU, and "
        "editor of your workspace."
    )
    async def knowledge_export_markdown(
        self, info: GqlInfo, ids: list[strawberry.ID], title: str = "DTU export"
    ) -> KnowledgeExportPayload:
        ctx = info.context.ops

        def work() -> str:
            keys = [expect_global_id(i, "Dtu", "dtu", f"ids.{n}") for n, i in enumerate(ids)]
            if not keys:
                raise OperatorError.single(ErrorCode.VALIDATION, "name at least one DTU", "ids")
            with ctx.db.read() as session:
                found = {
                    row.id: row for row in session.scalars(select(models.Dtu).where(models.Dtu.id.in_(keys)))
                }
            rows = []
            for index, key in enumerate(keys):
                if key not in found:
                    raise not_found("dtu", f"ids.{index}")
                # An unreadable DTU is refused (and audited) by the policy, as an unknown id is.
                check_access(ctx, EXPORT_ACTION, Action.READ, found[key], "dtu", key, f"ids.{index}")
                rows.append(found[key])
            document = render(rows, title).encode()
            artifact, _version = create_artifact(
                ctx,
                {
                    "name": title,
                    "kind": "export",
                    "label": "export",
                    "media_type": "text/markdown",
                    "filename": "dtus.md",
                },
                io.BytesIO(document),
            )
            return artifact.id

        try:
            artifact_id = await info.context.run(work)
        except OperatorError as exc:
            return KnowledgeExportPayload(errors=payload_errors(exc))
        return KnowledgeExportPayload(artifact_id=strawberry.ID(to_global_id("Artifact", artifact_id)))
