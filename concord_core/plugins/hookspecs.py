"""Every hook a lens can implement. Each is documented, with its exact signature, in docs/plugin-hooks.md.

A lens is a module (or object) found through the ``concord.lenses`` entry-point group whose functions are
marked with :data:`concord_core.plugins.hookimpl` and named like the specifications below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from concord_core.plugins.contract import GraphQLContribution, JobHandler
from concord_core.plugins.markers import hookspec


@hookspec(firstresult=True)
def concord_lens_manifest() -> dict[str, Any]:  # type: ignore[empty-body]
    """Return the lens's manifest: the parsed manifest.json shipped in its package."""


@hookspec(firstresult=True)
def concord_graphql_types() -> GraphQLContribution:  # type: ignore[empty-body]
    """Return the Strawberry types whose fields the lens adds to Query, Mutation and Subscription."""


@hookspec(firstresult=True)
def concord_job_handlers() -> Mapping[str, JobHandler]:  # type: ignore[empty-body]
    """Return a mapping from each job type the manifest declares to its handler(ctx, payload) -> dict."""


@hookspec(firstresult=True)
def concord_browsables() -> Sequence[Any]:  # type: ignore[empty-body]
    """Return the lens's data sources for Global, as concord_core.browse.Browsable descriptions."""
