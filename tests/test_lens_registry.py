"""The lens registry: hooks and manifest must agree, and no lens may silently override another lens's or
the kernel's GraphQL. Each broken fixture plugin fails with its own code; the others stay active."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import strawberry
from fixtures.lens_plugins import (
    MANIFESTS,
    NOTES,
    NOTES_JOB,
    NOTES_SOURCE,
    DtuFieldQueries,
    FixtureLens,
    ImpostorDateTime,
    ImpostorQueries,
    ImpostorQuery,
    KernelTypeQueries,
    NotAType,
    NotesQueries,
    OtherSharedQueries,
    OtherWidgetQueries,
    RaisingLens,
    RenamedDtuFieldQueries,
    SharedQueries,
    UnknownHookLens,
    WidgetQueries,
    manifest,
    summarize,
    write_dist_info,
)

from concord_core.api.gql.schema import KERNEL, build_schema
from concord_core.browse.sources import DTUS
from concord_core.cli.main import main
from concord_core.plugins import GraphQLContribution
from concord_core.plugins.manifest import load_manifest_file, validate_manifest
from concord_core.plugins.problems import ProblemCode
from concord_core.plugins.registry import (
    InvalidLenses,
    LensRegistry,
    build_registry,
    discover,
    load_registry,
)


def notes(**hooks: Any) -> FixtureLens:
    """The valid fixture-notes lens with some hook results replaced."""
    results: dict[str, Any] = {"graphql": None, "handlers": {NOTES_JOB: summarize}, **hooks}
    return FixtureLens(manifest("valid"), **results)


def other(**hooks: Any) -> FixtureLens:
    """A second valid lens, fixture-other, with no data types or jobs."""
    return FixtureLens(manifest("twin-a", lensId="fixture-other", name="Other"), **hooks)


def build(*plugins: object) -> LensRegistry:
    return build_registry([(f"plugin-{n} = fixtures.lens_plugins", p) for n, p in enumerate(plugins)], KERNEL)


def with_builtins(*plugins: tuple[str, object]) -> LensRegistry:
    return build_registry([*discover(builtin_only=True), *plugins], KERNEL)


#: case -> (a factory of the plugins to load, the code the LAST of them fails with)
CASES: dict[str, tuple[Callable[[], list[object]], ProblemCode]] = {
    "duplicate lensId": (
        lambda: [FixtureLens(manifest("twin-a")), FixtureLens(manifest("twin-b"))],
        ProblemCode.DUPLICATE_LENS_ID,
    ),
    "incompatible Concord version": (
        lambda: [FixtureLens(manifest("incompatible-version"))],
        ProblemCode.INCOMPATIBLE_VERSION,
    ),
    "manifest problem through a plugin": (
        lambda: [FixtureLens(manifest("unknown-capability"))],
        ProblemCode.UNKNOWN_CAPABILITY,
    ),
    "job type without the lens prefix": (
        lambda: [FixtureLens(manifest("job-prefix"), handlers={"another-lens.run": summarize})],
        ProblemCode.JOB_TYPE_PREFIX,
    ),
    "undeclared handler": (
        lambda: [notes(handlers={NOTES_JOB: summarize, "fixture-notes.undeclared": summarize})],
        ProblemCode.UNDECLARED_HANDLER,
    ),
    "missing handler": (lambda: [notes(handlers=None)], ProblemCode.MISSING_HANDLER),
    "handler not callable": (
        lambda: [notes(handlers={NOTES_JOB: "summarize"})],
        ProblemCode.HANDLER_NOT_CALLABLE,
    ),
    "action naming a nonexistent mutation": (
        lambda: [
            FixtureLens(
                manifest(
                    "valid",
                    jobTypes=[],
                    actions=[
                        {
                            "id": "go",
                            "title": "Go",
                            "mutation": "fixtureNoSuchMutation",
                            "permission": "items:write",
                        }
                    ],
                )
            )
        ],
        ProblemCode.MISSING_RESOLVER,
    ),
    "Query field of the kernel": (
        lambda: [notes(graphql=GraphQLContribution(query=[DtuFieldQueries]))],
        ProblemCode.FIELD_COLLISION,
    ),
    "kernel field under another Python name": (
        lambda: [notes(graphql=GraphQLContribution(query=[RenamedDtuFieldQueries]))],
        ProblemCode.FIELD_COLLISION,
    ),
    "Query field of another lens": (
        lambda: [
            notes(graphql=GraphQLContribution(query=[SharedQueries])),
            other(graphql=GraphQLContribution(query=[OtherSharedQueries])),
        ],
        ProblemCode.FIELD_COLLISION,
    ),
    "one field twice within a lens": (
        lambda: [notes(graphql=GraphQLContribution(query=[SharedQueries, OtherSharedQueries]))],
        ProblemCode.FIELD_COLLISION,
    ),
    "a different class named Dtu": (
        lambda: [notes(graphql=GraphQLContribution(query=[ImpostorQueries]))],
        ProblemCode.TYPE_COLLISION,
    ),
    "a type named Query": (
        lambda: [notes(graphql=GraphQLContribution(types=[ImpostorQuery]))],
        ProblemCode.TYPE_COLLISION,
    ),
    "a type named like a built-in scalar": (
        lambda: [notes(graphql=GraphQLContribution(types=[ImpostorDateTime]))],
        ProblemCode.TYPE_COLLISION,
    ),
    "type name of another lens": (
        lambda: [
            notes(graphql=GraphQLContribution(query=[WidgetQueries])),
            other(graphql=GraphQLContribution(query=[OtherWidgetQueries])),
        ],
        ProblemCode.TYPE_COLLISION,
    ),
    "one type name twice within a lens": (
        lambda: [notes(graphql=GraphQLContribution(query=[WidgetQueries, OtherWidgetQueries]))],
        ProblemCode.TYPE_COLLISION,
    ),
    "not a strawberry type": (
        lambda: [notes(graphql=GraphQLContribution(query=[NotAType]))],
        ProblemCode.NOT_A_STRAWBERRY_TYPE,
    ),
    "a class where a list belongs": (
        lambda: [notes(graphql=GraphQLContribution(query=NotesQueries))],  # type: ignore[arg-type]
        ProblemCode.NOT_A_STRAWBERRY_TYPE,
    ),
    "unknown hook name": (lambda: [UnknownHookLens(manifest("valid"))], ProblemCode.UNKNOWN_HOOK),
    "a hook that raises": (lambda: [RaisingLens(manifest("valid"))], ProblemCode.HOOK_FAILED),
    "graphql hook returning a list": (lambda: [notes(graphql=[NotesQueries])], ProblemCode.HOOK_FAILED),
    "handlers hook returning a list": (lambda: [notes(handlers=[NOTES_JOB])], ProblemCode.HOOK_FAILED),
    "browsables hook returning a number": (lambda: [notes(browsables=5)], ProblemCode.HOOK_FAILED),
    "a Global source that is not a Browsable": (
        lambda: [notes(browsables=[object()])],
        ProblemCode.NOT_A_BROWSABLE,
    ),
    "a Global source named like the kernel's": (
        lambda: [notes(browsables=[DTUS])],
        ProblemCode.BROWSABLE_COLLISION,
    ),
    "no manifest": (lambda: [FixtureLens(None)], ProblemCode.NO_MANIFEST),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_plugin_fails_with_its_own_code(case: str) -> None:
    factory, code = CASES[case]
    plugins = factory()
    registry = build(*plugins)
    *earlier, last = registry.lenses
    assert last.status == "failed"
    assert {problem.code for problem in last.problems} == {code}, [str(p) for p in last.problems]
    assert all(str(problem).startswith(f"{last.lens_id}: /") for problem in last.problems)
    assert [lens.status for lens in earlier] == ["active"] * len(earlier)
    build_schema(registry)  # a failed lens never breaks composing the others


def test_every_problem_code_has_a_fixture() -> None:
    covered = {code for _factory, code in CASES.values()} | {ProblemCode.LOAD_FAILED}  # see below
    for folder in MANIFESTS.iterdir():
        parsed, problems = load_manifest_file(folder)
        covered |= {p.code for p in problems or validate_manifest(parsed, folder.name)}
    assert covered == set(ProblemCode)


def test_collision_keeps_the_first_lens_and_names_it() -> None:
    registry = with_builtins(
        (NOTES_SOURCE, notes(graphql=GraphQLContribution(query=[NotesQueries, SharedQueries]))),
        ("fixture-other = x:y", other(graphql=GraphQLContribution(query=[OtherSharedQueries]))),
    )
    assert registry.get("fixture-notes") is not None
    assert registry.get("fixture-other") is None
    (problem,) = registry.failed[0].problems
    assert str(problem) == (
        "fixture-other: /: graphql.field_collision: "
        "Query.fixtureShared is already defined by lens 'fixture-notes'"
    )
    sdl = build_schema(registry).as_str()
    assert "fixtureShared: Int!" in sdl
    assert "fixtureNotesCount: Int!" in sdl
    assert "knowledgeCitationGraph" in sdl


def test_the_kernel_field_wins_and_the_error_says_so() -> None:
    (lens,) = build(notes(graphql=GraphQLContribution(query=[DtuFieldQueries]))).lenses
    assert [p.message for p in lens.problems] == ["Query.dtu is already defined by the kernel"]


def test_a_failed_lens_reserves_no_names() -> None:
    broken = notes(handlers=None, graphql=GraphQLContribution(query=[SharedQueries]))
    registry = build(broken, other(graphql=GraphQLContribution(query=[OtherSharedQueries])))
    assert [lens.status for lens in registry.lenses] == ["failed", "active"]
    assert "fixtureShared: String!" in build_schema(registry).as_str()


def test_sharing_the_kernels_types_is_not_a_collision() -> None:
    registry = with_builtins((NOTES_SOURCE, notes(graphql=GraphQLContribution(query=[KernelTypeQueries]))))
    assert registry.problems == []
    sdl = build_schema(registry).as_str()
    assert "fixtureLatestDtu: Dtu" in sdl
    assert "fixtureItems: LensItemConnection!" in sdl


def test_valid_fixture_lens_loads_with_everything_it_declares() -> None:
    registry = with_builtins((NOTES_SOURCE, NOTES))
    assert registry.problems == []
    lens = registry.get("fixture-notes")
    assert lens is not None
    assert (lens.version, lens.source) == ("1.2.3", NOTES_SOURCE)
    assert registry.job_handlers()[NOTES_JOB] is summarize
    validator = registry.item_validator("fixture-notes", "note")
    assert validator is not None and validator.is_valid({"title": "x"})
    assert registry.item_validator("fixture-notes", "nope") is None
    assert registry.item_validator("nope", "note") is None


def test_each_hook_result_is_kept_on_its_lens() -> None:
    """concord_lens_manifest, concord_graphql_types, concord_job_handlers and concord_browsables, each
    called on the lens's own plugin manager."""
    source = dataclasses.replace(DTUS, name="fixture_notes_dtus")
    contribution = GraphQLContribution(query=[NotesQueries])
    registry = build(
        notes(graphql=contribution, browsables=[source]),
        other(browsables=()),
    )
    notes_lens, other_lens = registry.lenses
    assert registry.problems == []
    assert notes_lens.manifest == manifest("valid")
    assert notes_lens.graphql is contribution
    assert notes_lens.job_handlers == {NOTES_JOB: summarize}
    assert notes_lens.browsables == [source]
    assert (other_lens.graphql, other_lens.job_handlers, other_lens.browsables) == (
        GraphQLContribution(),
        {},
        [],
    )


def test_load_registry_refuses_or_skips_invalid_lenses(caplog: pytest.LogCaptureFixture) -> None:
    plugins = [(NOTES_SOURCE, NOTES), ("three = x:y", FixtureLens(manifest("three-problems")))]
    with pytest.raises(InvalidLenses) as refused:
        load_registry(KERNEL, skip_invalid=False, plugins=plugins)
    assert len(refused.value.problems) == 3
    assert all(str(problem) in str(refused.value) for problem in refused.value.problems)
    with caplog.at_level(logging.ERROR, logger="concord.lenses"):
        registry = load_registry(KERNEL, skip_invalid=True, plugins=plugins)
    assert [lens.lens_id for lens in registry.failed] == ["fixture-three-problems"]
    assert [lens.lens_id for lens in registry.active] == ["fixture-notes"]
    assert len([r for r in caplog.records if "lens skipped" in r.getMessage()]) == 3


def test_installed_lens_that_cannot_be_imported_or_is_invalid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_dist_info(
        tmp_path,
        {
            "fixture-missing": "concord_fixture_no_such_module:plugin",
            "fixture-three": "fixtures.lens_plugins:THREE_PROBLEMS",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not {"fixture-missing", "fixture-three"} & {
        s.split(" = ")[0] for s, _ in discover(builtin_only=True)
    }
    registry = build_registry(discover(), KERNEL)
    missing = next(lens for lens in registry.lenses if lens.lens_id == "fixture-missing")
    assert [p.code for p in missing.problems] == [ProblemCode.LOAD_FAILED]
    assert "ModuleNotFoundError" in missing.problems[0].message
    three = next(lens for lens in registry.lenses if lens.lens_id == "fixture-three-problems")
    assert len(three.problems) == 3
    assert registry.get("knowledge") is not None

    assert main(["lens", "validate"]) == 1
    out = capsys.readouterr().out
    for problem in registry.problems:
        assert str(problem) in out
    assert main(["lens", "list"]) == 0
    listing = capsys.readouterr().out
    assert "fixture-three-problems" in listing and " failed " in listing
    assert "knowledge" in listing and " active " in listing


def _generated_lens(n: int) -> FixtureLens:
    widget = strawberry.type(type(f"Gen{n}Widget", (), {"__annotations__": {"size": int}}))
    field_name = f"gen{n}_widget"
    queries = strawberry.type(
        type(f"Gen{n}Queries", (), {"__annotations__": {field_name: widget | None}, field_name: None})
    )
    lens_manifest = manifest("twin-a", lensId=f"gen-{n}", name=f"Generated {n}")
    return FixtureLens(lens_manifest, graphql=GraphQLContribution(query=[queries]))


def test_fifty_lenses_compose_into_one_schema() -> None:
    plugins = [(f"gen-{n} = generated", _generated_lens(n)) for n in range(50)]
    started = time.perf_counter()
    registry = with_builtins(*plugins)
    schema = build_schema(registry)
    elapsed = time.perf_counter() - started
    assert registry.problems == []
    assert len(registry.active) == 50 + len(discover(builtin_only=True))
    sdl = schema.as_str()
    assert all(f"gen{n}Widget: Gen{n}Widget" in sdl for n in range(50))
    assert elapsed < 10, f"validation and composition of 50 lenses took {elapsed:.2f}s"
