"""Job handlers of the bookmarks lens (declared under ``jobTypes`` in manifest.json)."""

from __future__ import annotations

from typing import Any

from concord_core.plugins import JobContext
from concord_lens_bookmarks.digest import render_digest
from concord_lens_bookmarks.items import normalize_tag, own_bookmarks, tags_of

BUILD_DIGEST = "bookmarks.build_digest"


def build_digest(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Write an HTML digest of the job owner's bookmarks (only those tagged ``payload["tag"]``, if given).

    Idempotent: the artifact is keyed by this job and its step, and the content has no timestamp, so a
    re-run stores nothing new; once the artifact is checkpointed, a re-run just returns it.
    """
    done = ctx.checkpoint_state
    if done and "artifactId" in done:
        return dict(done)
    tag = normalize_tag(str(payload["tag"])) if payload.get("tag") else None
    title = str(payload.get("title") or (f"Bookmarks tagged {tag}" if tag else "Bookmarks"))
    operations = ctx.operations
    ctx.progress(0.1, "reading bookmarks")
    with operations.db.read() as session:
        bookmarks = [
            data
            for data in session.scalars(own_bookmarks(operations.principal))
            if tag is None or tag in tags_of(data)
        ]
    ctx.progress(0.5, f"rendering {len(bookmarks)} bookmarks")
    artifact_id, version = ctx.write_artifact(
        step="render",
        role="digest",
        name=title,
        content=render_digest(bookmarks, title).encode(),
        media_type="text/html",
        label="digest",
    )
    output = {"artifactId": artifact_id, "version": version, "bookmarks": len(bookmarks)}
    ctx.checkpoint(output)
    ctx.progress(1.0, "done")
    return output
