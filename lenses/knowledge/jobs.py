"""Job handlers of the knowledge lens."""

from __future__ import annotations

from typing import Any

from concord_core.operators.dtus import get_dtu
from concord_core.operators.errors import OperatorError
from concord_core.plugins.contract import JobContext
from lenses.knowledge.markdown import render

EXPORT_MARKDOWN = "knowledge.export_markdown"


def export_markdown(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Render the DTUs in ``payload["dtuIds"]`` (those the job's owner can read) into a Markdown artifact.

    Idempotent: the artifact is keyed by this job and step, so a re-run after a crash writes no duplicate.
    """
    ids = [str(dtu_id) for dtu_id in payload.get("dtuIds", [])]
    operations = ctx.operations
    rows, missing = [], []
    with operations.db.read() as session:
        for dtu_id in ids:
            try:
                rows.append(get_dtu(operations, session, dtu_id))
            except OperatorError:
                missing.append(dtu_id)
    ctx.progress(0.5, f"rendering {len(rows)} DTUs")
    document = render(rows, payload.get("title") or f"DTU export ({len(rows)})")
    artifact_id, version = ctx.write_artifact(
        step="render",
        role="export",
        name=payload.get("title") or "DTU export (Markdown)",
        content=document.encode(),
        media_type="text/markdown",
        label="export",
    )
    ctx.progress(1.0, "done")
    return {"artifactId": artifact_id, "version": version, "exported": len(rows), "missing": missing}
