"""Lens discovery, loading and validation: the registry the server, the CLI and CI share.

Each lens gets a pluggy PluginManager of its own, so every hook result is attributable to its lens.
Validation covers the manifest (see :mod:`.manifest`), the hooks (unknown hook names, handlers for exactly
the declared job types) and the composed GraphQL surface (no collisions, a resolver for every action).
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy
from jsonschema import Draft202012Validator

from concord_core.browse.source import Browsable
from concord_core.browse.sources import KERNEL_BROWSABLES
from concord_core.plugins import hookspecs
from concord_core.plugins.contract import GraphQLContribution, JobHandler
from concord_core.plugins.graphql_names import BUILTIN_TYPES, NotAStrawberryType, collect
from concord_core.plugins.manifest import item_data_validator, lens_id_of, validate_manifest
from concord_core.plugins.markers import ENTRY_POINT_GROUP, PROJECT_NAME
from concord_core.plugins.problems import Problem, ProblemCode

log = logging.getLogger("concord.lenses")

Status = Literal["active", "failed"]


@dataclass
class Lens:
    """One lens as loaded: its manifest, what its hooks returned, and its problems (if any)."""

    source: str  # the entry point (or module) it came from
    lens_id: str
    manifest: dict[str, Any] | None = None
    graphql: GraphQLContribution = field(default_factory=GraphQLContribution)
    job_handlers: dict[str, JobHandler] = field(default_factory=dict)
    browsables: list[Any] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def status(self) -> Status:
        return "failed" if self.problems else "active"

    @property
    def version(self) -> str | None:
        return self.manifest.get("version") if self.manifest else None

    def data_type(self, name: str) -> dict[str, Any] | None:
        for entry in (self.manifest or {}).get("dataTypes", []):
            if entry["name"] == name:
                return dict(entry)
        return None


@dataclass
class LensRegistry:
    lenses: list[Lens]
    load_seconds: float = 0.0
    _validators: dict[tuple[str, str], Draft202012Validator] = field(default_factory=dict, repr=False)

    @property
    def active(self) -> list[Lens]:
        return [lens for lens in self.lenses if lens.status == "active"]

    @property
    def failed(self) -> list[Lens]:
        return [lens for lens in self.lenses if lens.status == "failed"]

    @property
    def problems(self) -> list[Problem]:
        return [problem for lens in self.lenses for problem in lens.problems]

    def get(self, lens_id: str) -> Lens | None:
        """An active lens by id."""
        return next((lens for lens in self.active if lens.lens_id == lens_id), None)

    def item_validator(self, lens_id: str, type_name: str) -> Draft202012Validator | None:
        """The JSON Schema validator for an active lens's data type; None if there is no such type."""
        key = (lens_id, type_name)
        if key not in self._validators:
            lens = self.get(lens_id)
            data_type = lens.data_type(type_name) if lens else None
            if data_type is None:
                return None
            self._validators[key] = item_data_validator(data_type["schema"])
        return self._validators[key]

    def job_handlers(self) -> dict[str, JobHandler]:
        return {job_type: handler for lens in self.active for job_type, handler in lens.job_handlers.items()}


class InvalidLenses(Exception):
    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("invalid lenses:\n" + "\n".join(f"  {problem}" for problem in problems))
        self.problems = list(problems)


BUILTIN_DISTRIBUTION = "concord"


def discover(*, builtin_only: bool = False) -> list[tuple[str, object]]:
    """Installed lenses: (entry point, loaded object) for each ``concord.lenses`` entry point; with
    ``builtin_only``, just those shipped in Concord's own distribution."""
    found: list[tuple[str, object]] = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if builtin_only and (entry_point.dist is None or entry_point.dist.name != BUILTIN_DISTRIBUTION):
            continue
        source = f"{entry_point.name} = {entry_point.value}"
        try:
            found.append((source, entry_point.load()))
        except Exception as exc:  # a lens that cannot even be imported is reported, not fatal to discovery
            found.append((source, _LoadFailure(entry_point.name, f"{type(exc).__name__}: {exc}")))
    return found


@dataclass
class _LoadFailure:
    name: str
    error: str


def _call(manager: pluggy.PluginManager, hook: str, lens: Lens, expected: type | None = None) -> Any:
    """A hook's result; None (and a problem on the lens) if it raised or returned something else than
    ``expected``, so one broken lens never breaks loading the others."""
    try:
        result = getattr(manager.hook, hook)()
    except Exception as exc:  # a crashing hook is the lens's problem, reported as such
        lens.problems.append(Problem(lens.lens_id, "/", ProblemCode.HOOK_FAILED, f"{hook}() raised {exc!r}"))
        return None
    if result is not None and expected is not None and not isinstance(result, expected):
        lens.problems.append(
            Problem(
                lens.lens_id,
                "/",
                ProblemCode.HOOK_FAILED,
                f"{hook}() returned a {type(result).__name__}, not a {expected.__name__}",
            )
        )
        return None
    return result


def load_lens(source: str, plugin: object) -> Lens:
    """Run one lens's hooks and check it on its own (cross-lens checks come in :func:`build_registry`)."""
    if isinstance(plugin, _LoadFailure):
        return Lens(
            source, plugin.name, problems=[Problem(plugin.name, "/", ProblemCode.LOAD_FAILED, plugin.error)]
        )
    lens = Lens(source, source.split(" = ")[0])
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    try:
        manager.register(plugin, name=lens.lens_id)
        manager.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        lens.problems.append(Problem(lens.lens_id, "/", ProblemCode.UNKNOWN_HOOK, str(exc)))
        return lens
    manifest = _call(manager, "concord_lens_manifest", lens)
    lens.lens_id = lens_id_of(manifest, lens.lens_id)
    if manifest is None:
        lens.problems.append(
            Problem(lens.lens_id, "/", ProblemCode.NO_MANIFEST, "concord_lens_manifest() gave nothing")
        )
        return lens
    problems = validate_manifest(manifest, lens.lens_id)
    lens.problems += problems
    if problems:
        return lens
    lens.manifest = manifest
    graphql = _call(manager, "concord_graphql_types", lens, GraphQLContribution)
    if graphql is not None:
        lens.graphql = graphql
    lens.job_handlers = dict(_call(manager, "concord_job_handlers", lens, Mapping) or {})
    lens.browsables = list(_call(manager, "concord_browsables", lens, Sequence) or [])
    if not lens.problems:  # after a failed hook, "missing handler" would only repeat that failure
        lens.problems += _check_handlers(lens)
    return lens


def _check_handlers(lens: Lens) -> list[Problem]:
    assert lens.manifest is not None
    declared = {job["type"]: index for index, job in enumerate(lens.manifest.get("jobTypes", []))}
    problems = []
    for job_type, index in declared.items():
        if job_type not in lens.job_handlers:
            problems.append(
                Problem(
                    lens.lens_id,
                    f"/jobTypes/{index}/type",
                    ProblemCode.MISSING_HANDLER,
                    f"no handler for declared job type {job_type!r}",
                )
            )
    for job_type, handler in lens.job_handlers.items():
        if job_type not in declared:
            problems.append(
                Problem(
                    lens.lens_id,
                    "/jobTypes",
                    ProblemCode.UNDECLARED_HANDLER,
                    f"handler for {job_type!r}, which the manifest does not declare",
                )
            )
        elif not callable(handler):
            problems.append(
                Problem(
                    lens.lens_id,
                    f"/jobTypes/{declared[job_type]}/type",
                    ProblemCode.HANDLER_NOT_CALLABLE,
                    f"the handler for {job_type!r} is not callable",
                )
            )
    return problems


def _roots(contribution: GraphQLContribution) -> dict[str, Sequence[type]]:
    return {
        "query": contribution.query,
        "mutation": contribution.mutation,
        "subscription": contribution.subscription,
    }


def _check_graphql(lenses: Iterable[Lens], kernel: GraphQLContribution) -> None:
    """Refuse any root field or type name that two lenses, or a lens and the kernel, both define."""
    kernel_names = collect(_roots(kernel), kernel.types)
    fields: dict[tuple[str, str], str] = dict.fromkeys(kernel_names.root_fields, "the kernel")
    types: dict[str, tuple[object, str]] = {
        name: (origin, "GraphQL") for name, origin in BUILTIN_TYPES.items()
    }
    types.update({name: (origin, "the kernel") for name, origin in kernel_names.types.items()})
    mutations = {name for root, name in kernel_names.root_fields if root == "mutation"}
    for lens in lenses:
        if lens.problems:
            continue
        try:
            names = collect(_roots(lens.graphql), lens.graphql.types)
        except NotAStrawberryType as exc:
            lens.problems.append(Problem(lens.lens_id, "/", ProblemCode.NOT_A_STRAWBERRY_TYPE, str(exc)))
            continue
        problems = [
            Problem(
                lens.lens_id,
                "/",
                ProblemCode.TYPE_COLLISION if clash.startswith("type ") else ProblemCode.FIELD_COLLISION,
                f"{clash} is defined twice by this lens",
            )
            for clash in names.clashes
        ]
        for key in names.root_fields:
            if key in fields:
                problems.append(
                    Problem(
                        lens.lens_id,
                        "/",
                        ProblemCode.FIELD_COLLISION,
                        f"{key[0].title()}.{key[1]} is already defined by {fields[key]}",
                    )
                )
        for name, origin in names.types.items():
            if name in types and types[name][0] != origin:
                problems.append(
                    Problem(
                        lens.lens_id,
                        "/",
                        ProblemCode.TYPE_COLLISION,
                        f"type {name} is already defined by {types[name][1]}",
                    )
                )
        own_mutations = {name for root, name in names.root_fields if root == "mutation"}
        assert lens.manifest is not None
        for index, action in enumerate(lens.manifest["actions"]):
            if action["mutation"] not in own_mutations | mutations:
                problems.append(
                    Problem(
                        lens.lens_id,
                        f"/actions/{index}/mutation",
                        ProblemCode.MISSING_RESOLVER,
                        f"no Mutation.{action['mutation']} for action {action['id']!r}",
                    )
                )
        if problems:
            lens.problems += problems
            continue
        owner = f"lens {lens.lens_id!r}"
        fields.update(dict.fromkeys(names.root_fields, owner))
        for name, origin in names.types.items():
            types.setdefault(name, (origin, owner))


def build_registry(plugins: Iterable[tuple[str, object]], kernel: GraphQLContribution) -> LensRegistry:
    """Load and check every lens; a lens with any problem is marked failed (see :attr:`Lens.problems`)."""
    started = time.perf_counter()
    lenses = [load_lens(source, plugin) for source, plugin in plugins]
    seen: dict[str, Lens] = {}
    for lens in lenses:
        if lens.lens_id in seen:
            lens.problems.append(
                Problem(
                    lens.lens_id,
                    "/lensId",
                    ProblemCode.DUPLICATE_LENS_ID,
                    f"{seen[lens.lens_id].source} already uses this lensId",
                )
            )
        else:
            seen[lens.lens_id] = lens
    _check_graphql(lenses, kernel)
    _check_browsables(lenses)
    return LensRegistry(lenses, load_seconds=time.perf_counter() - started)


def _check_browsables(lenses: Iterable[Lens]) -> None:
    """Each lens's Global sources must be Browsable descriptions with names no one else uses."""
    owners = {browsable.name: "the kernel" for browsable in KERNEL_BROWSABLES}
    for lens in lenses:
        if lens.problems:
            continue
        problems = []
        for index, browsable in enumerate(lens.browsables):
            if not isinstance(browsable, Browsable):
                problems.append(
                    Problem(
                        lens.lens_id,
                        "/",
                        ProblemCode.NOT_A_BROWSABLE,
                        f"concord_browsables()[{index}] is not a concord_core.browse.Browsable",
                    )
                )
            elif browsable.name in owners:
                problems.append(
                    Problem(
                        lens.lens_id,
                        "/",
                        ProblemCode.BROWSABLE_COLLISION,
                        f"Global source {browsable.name!r} is already defined by {owners[browsable.name]}",
                    )
                )
        if problems:
            lens.problems += problems
        else:
            owners.update({browsable.name: f"lens {lens.lens_id!r}" for browsable in lens.browsables})


def load_registry(
    kernel: GraphQLContribution, *, skip_invalid: bool, plugins: Iterable[tuple[str, object]] | None = None
) -> LensRegistry:
    """The installed lenses, ready to serve. Raises :class:`InvalidLenses` unless ``skip_invalid``."""
    registry = build_registry(discover() if plugins is None else plugins, kernel)
    if registry.failed:
        if not skip_invalid:
            raise InvalidLenses(registry.problems)
        for problem in registry.problems:
            log.error("lens skipped: %s", problem)
    return registry
