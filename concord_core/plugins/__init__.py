"""Lenses as pluggy plugins: markers, hook specifications, the manifest contract and the registry.

Lens authors need only :data:`hookimpl`, :class:`GraphQLContribution` and :class:`JobContext`.
"""

from concord_core.plugins.contract import (
    GraphQLContribution,
    JobCancelled,
    JobContext,
    JobHandler,
    PermanentJobError,
)
from concord_core.plugins.markers import ENTRY_POINT_GROUP, PROJECT_NAME, hookimpl, hookspec
from concord_core.plugins.problems import Problem, ProblemCode

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT_NAME",
    "GraphQLContribution",
    "JobCancelled",
    "JobContext",
    "JobHandler",
    "PermanentJobError",
    "Problem",
    "ProblemCode",
    "hookimpl",
    "hookspec",
]
