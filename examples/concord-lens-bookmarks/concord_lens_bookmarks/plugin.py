"""The bookmarks lens's hook implementations: what the ``concord.lenses`` entry point points at.

Concord finds this module through the entry point in pyproject.toml, registers it with pluggy and calls
each ``concord_*`` function below once at start-up; everything else it needs is in the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from concord_core.plugins import GraphQLContribution, JobHandler, hookimpl
from concord_lens_bookmarks import jobs
from concord_lens_bookmarks.schema import BookmarkMutations, BookmarkQueries


@hookimpl
def concord_lens_manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(
        resources.files("concord_lens_bookmarks").joinpath("manifest.json").read_text("utf-8")
    )
    return manifest


@hookimpl
def concord_graphql_types() -> GraphQLContribution:
    return GraphQLContribution(query=[BookmarkQueries], mutation=[BookmarkMutations])


@hookimpl
def concord_job_handlers() -> Mapping[str, JobHandler]:
    return {jobs.BUILD_DIGEST: jobs.build_digest}
