"""The knowledge lens's hooks: DTUs as a lens, using only the public plugin contract."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from concord_core.plugins import GraphQLContribution, JobHandler, hookimpl
from lenses.knowledge import jobs
from lenses.knowledge.schema import KnowledgeMutations, KnowledgeQueries


@hookimpl
def concord_lens_manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(
        resources.files(__package__).joinpath("manifest.json").read_text("utf-8")
    )
    return manifest


@hookimpl
def concord_graphql_types() -> GraphQLContribution:
    return GraphQLContribution(query=[KnowledgeQueries], mutation=[KnowledgeMutations])


@hookimpl
def concord_job_handlers() -> Mapping[str, JobHandler]:
    return {jobs.EXPORT_MARKDOWN: jobs.export_markdown}
