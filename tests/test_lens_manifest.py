"""Lens manifests: the published JSON Schema, then the rules past it. Every broken fixture manifest in
tests/fixtures/lenses fails with its own stable code, through the library and through
`concord lens validate`, which prints every problem as `lensId: /json/path: code: message`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.lens_plugins import MANIFESTS, manifest
from jsonschema import Draft202012Validator

from concord_core.cli.main import main
from concord_core.plugins.manifest import load_manifest_file, manifest_schema, validate_manifest
from concord_core.plugins.problems import Problem, ProblemCode

LINE = re.compile(r"^(?P<lens>[^:\s]+): (?P<path>/\S*): (?P<code>[a-z_]+\.[a-z_]+): (?P<message>.+)$")

#: fixture folder -> (its one code, the JSON paths it is reported at)
BROKEN = {
    "not-json": (ProblemCode.NOT_JSON, ["/"]),
    "missing-field": (ProblemCode.MISSING_FIELD, ["/category", "/version"]),
    "wrong-type": (ProblemCode.WRONG_TYPE, ["/capabilities/items", "/exportFormats"]),
    "invalid-value": (ProblemCode.INVALID_VALUE, ["/version"]),
    "unknown-field": (ProblemCode.UNKNOWN_FIELD, ["/colour"]),
    "unknown-capability": (ProblemCode.UNKNOWN_CAPABILITY, ["/capabilities/teleport"]),
    "duplicate-entry": (ProblemCode.DUPLICATE_ENTRY, ["/views/1/id"]),
    "invalid-data-schema": (ProblemCode.INVALID_DATA_SCHEMA, ["/dataTypes/0/schema"]),
    "unresolvable-ref": (ProblemCode.INVALID_DATA_SCHEMA, ["/dataTypes/0/schema"]),
    "invalid-seed": (ProblemCode.INVALID_SEED, ["/dataTypes/0/seed/1/title"]),
    "unknown-data-type": (ProblemCode.UNKNOWN_DATA_TYPE, ["/views/0/dataType"]),
    "unknown-export-format": (ProblemCode.UNKNOWN_EXPORT_FORMAT, ["/exportFormats/1"]),
    "undeclared-permission": (ProblemCode.UNDECLARED_PERMISSION, ["/actions/0/permission"]),
    "incompatible-version": (ProblemCode.INCOMPATIBLE_VERSION, ["/concordVersion"]),
    "job-prefix": (ProblemCode.JOB_TYPE_PREFIX, ["/jobTypes/0/type"]),
}
VALID = ("valid", "twin-a", "twin-b")

#: Lens authors and CI scripts match on these strings: renaming one breaks them.
PUBLISHED_CODES = {
    "manifest.not_json",
    "manifest.missing_field",
    "manifest.wrong_type",
    "manifest.invalid_value",
    "manifest.unknown_field",
    "manifest.unknown_capability",
    "manifest.duplicate_entry",
    "manifest.invalid_data_schema",
    "manifest.invalid_seed",
    "manifest.unknown_data_type",
    "manifest.unknown_export_format",
    "manifest.undeclared_permission",
    "lens.duplicate_id",
    "lens.incompatible_version",
    "lens.load_failed",
    "lens.unknown_hook",
    "lens.no_manifest",
    "lens.hook_failed",
    "jobs.missing_handler",
    "jobs.undeclared_handler",
    "jobs.wrong_prefix",
    "jobs.handler_not_callable",
    "actions.missing_resolver",
    "graphql.not_a_type",
    "graphql.field_collision",
    "graphql.type_collision",
}


def library_problems(folder: str) -> list[Problem]:
    """What the library finds in a fixture folder: reading it, then validating it."""
    parsed, problems = load_manifest_file(MANIFESTS / folder)
    return problems or validate_manifest(parsed, folder)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["lens", "validate", *args])
    return code, capsys.readouterr().out.splitlines()


def test_every_fixture_folder_is_accounted_for() -> None:
    assert {path.name for path in MANIFESTS.iterdir() if path.is_dir()} == {
        *BROKEN,
        "three-problems",
        *VALID,
    }


def test_published_codes_are_stable() -> None:
    assert PUBLISHED_CODES.issubset(code.value for code in ProblemCode)


def test_the_published_schema_is_a_valid_json_schema() -> None:
    Draft202012Validator.check_schema(manifest_schema())


@pytest.mark.parametrize("folder", sorted(BROKEN))
def test_broken_manifest_fails_with_its_own_code(folder: str) -> None:
    code, paths = BROKEN[folder]
    problems = library_problems(folder)
    assert {problem.code for problem in problems} == {code}, problems
    assert sorted(problem.path for problem in problems) == paths
    lens_id = folder if folder == "not-json" else f"fixture-{folder}"
    assert {problem.lens_id for problem in problems} == {lens_id}
    assert all(problem.message for problem in problems)


@pytest.mark.parametrize("folder", sorted(BROKEN))
def test_lens_validate_prints_each_problem_and_exits_1(
    folder: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = cli(capsys, str(MANIFESTS / folder))
    assert code == 1
    *problem_lines, summary = lines
    assert summary.startswith("FAILED: 1 manifest(s)")
    assert problem_lines == [str(problem) for problem in library_problems(folder)]
    for line in problem_lines:
        match = LINE.match(line)
        assert match, line
        assert match["code"] == BROKEN[folder][0].value


def test_every_problem_is_reported_not_just_the_first(capsys: pytest.CaptureFixture[str]) -> None:
    problems = library_problems("three-problems")
    assert [(p.path, p.code) for p in problems] == [
        ("/capabilities/teleport", ProblemCode.UNKNOWN_CAPABILITY),
        ("/category", ProblemCode.MISSING_FIELD),
        ("/name", ProblemCode.WRONG_TYPE),
    ]
    code, lines = cli(capsys, str(MANIFESTS / "three-problems" / "manifest.json"))
    assert code == 1
    assert lines == [*map(str, problems), "FAILED: 1 manifest(s), 3 problem(s)"]


def test_rule_checks_report_every_problem_too() -> None:
    broken = manifest(
        "valid",
        exportFormats=["json", "docx", "xlsx"],
        concordVersion=">=9",
        jobTypes=[{"type": "fixture-notes.summarize"}, {"type": "elsewhere.run"}],
    )
    assert sorted((p.path, p.code) for p in validate_manifest(broken)) == [
        ("/concordVersion", ProblemCode.INCOMPATIBLE_VERSION),
        ("/exportFormats/1", ProblemCode.UNKNOWN_EXPORT_FORMAT),
        ("/exportFormats/2", ProblemCode.UNKNOWN_EXPORT_FORMAT),
        ("/jobTypes/1/type", ProblemCode.JOB_TYPE_PREFIX),
    ]


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (">=0.1,<1", None),
        ("^1.0", ProblemCode.INVALID_VALUE),
        ("<0.1", ProblemCode.INCOMPATIBLE_VERSION),
    ],
)
def test_concord_version_range(value: str, code: ProblemCode | None) -> None:
    problems = validate_manifest(manifest("valid", concordVersion=value))
    assert [p.code for p in problems] == ([code] if code else [])


def test_a_manifest_that_is_not_an_object_is_a_wrong_type() -> None:
    (problem,) = validate_manifest(["not", "an", "object"], "listy")
    assert (problem.lens_id, problem.path, problem.code) == ("listy", "/", ProblemCode.WRONG_TYPE)


def test_a_lens_folder_without_manifest_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty-lens").mkdir()
    _parsed, (problem,) = load_manifest_file(tmp_path / "empty-lens")
    assert (problem.lens_id, problem.code) == ("empty-lens", ProblemCode.NO_MANIFEST)


@pytest.mark.parametrize("folder", VALID)
def test_valid_manifests_pass(folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert library_problems(folder) == []
    code, lines = cli(capsys, str(MANIFESTS / folder))
    assert (code, lines) == (0, ["ok: 1 manifest(s), 0 problem(s)"])


def test_installed_lenses_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = cli(capsys)
    assert code == 0, lines
    assert lines[-1].startswith("ok: ")
    assert "knowledge 1.0.0" in lines[-1]


def test_lens_validate_as_a_command_checks_every_path_given() -> None:
    """The real command, once, over the whole broken set: exit 1 and every fixture's code in the output."""
    folders = [str(MANIFESTS / folder) for folder in [*sorted(BROKEN), "three-problems", "valid"]]
    done = subprocess.run(
        [sys.executable, "-m", "concord_core.cli.main", "lens", "validate", *folders],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    *lines, summary = done.stdout.splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert {m["code"] for m in matches if m} == {code.value for code, _paths in BROKEN.values()}
    expected = sum(len(paths) for _code, paths in BROKEN.values()) + 3
    assert summary == f"FAILED: {len(folders)} manifest(s), {expected} problem(s)"


def test_lens_validate_refuses_two_folders_with_one_lens_id(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = cli(capsys, str(MANIFESTS / "twin-a"), str(MANIFESTS / "twin-b"))
    assert code == 1
    (line, _summary) = lines
    match = LINE.match(line)
    assert match and (match["lens"], match["path"], match["code"]) == (
        "fixture-twin",
        "/lensId",
        ProblemCode.DUPLICATE_LENS_ID.value,
    )


def test_a_manifest_without_lens_id_is_reported_under_its_folder_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "nameless-lens"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest("twin-a", lensId=7)))
    for path in (folder, folder / "manifest.json"):
        code, lines = cli(capsys, str(path))
        assert code == 1
        assert lines[0].startswith("nameless-lens: /lensId: manifest.wrong_type: "), lines


def test_a_seed_that_breaks_a_format_is_invalid() -> None:
    valid = manifest("valid")
    valid["dataTypes"][0]["seed"][0]["due"] = "2026-02-30"
    assert [(p.path, p.code) for p in validate_manifest(valid)] == [
        ("/dataTypes/0/seed/0/due", ProblemCode.INVALID_SEED)
    ]


def test_the_same_manifest_named_twice_is_checked_once(capsys: pytest.CaptureFixture[str]) -> None:
    folder = MANIFESTS / "valid"
    code, lines = cli(capsys, str(folder), str(folder / "manifest.json"), f"{folder}/../valid")
    assert code == 0, lines
    assert lines == ["ok: 1 manifest(s), 0 problem(s)"]
