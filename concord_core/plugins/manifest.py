"""Manifest validation: the published JSON Schema, then the rules a schema cannot say.

:func:`validate_manifest` reports every problem, each with a stable code, never just the first.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

import concord_core
from concord_core.plugins.problems import Problem, ProblemCode

MANIFEST_FILE = "manifest.json"

#: Export formats Concord knows how to label and serve.
KNOWN_EXPORT_FORMATS = frozenset(
    {
        "json",
        "jsonl",
        "markdown",
        "csv",
        "html",
        "pdf",
        "zip",
        "wav",
        "mp3",
        "flac",
        "ogg",
        "png",
        "jpeg",
        "svg",
    }
)


@cache
def manifest_schema() -> dict[str, Any]:
    """The lens manifest JSON Schema that ships in this package."""
    text = resources.files("concord_core.plugins").joinpath("manifest.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(manifest_schema())


def _pointer(parts: Any) -> str:
    return "/" + "/".join(str(part) for part in parts)


def _schema_problem(lens_id: str, error: ValidationError) -> Problem:
    path = _pointer(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return Problem(
            lens_id, _pointer([*error.absolute_path, missing]), ProblemCode.MISSING_FIELD, error.message
        )
    if error.validator == "additionalProperties":
        code = (
            ProblemCode.UNKNOWN_CAPABILITY
            if list(error.absolute_path) == ["capabilities"]
            else (ProblemCode.UNKNOWN_FIELD)
        )
        return Problem(lens_id, path, code, error.message)
    if error.validator == "type":
        return Problem(lens_id, path, ProblemCode.WRONG_TYPE, error.message)
    return Problem(lens_id, path, ProblemCode.INVALID_VALUE, error.message)


def _duplicates(lens_id: str, manifest: dict[str, Any], section: str, key: str) -> list[Problem]:
    seen: set[str] = set()
    problems = []
    for index, entry in enumerate(manifest.get(section) or []):
        value = entry.get(key) if isinstance(entry, dict) else None
        if isinstance(value, str):
            if value in seen:
                problems.append(
                    Problem(
                        lens_id,
                        f"/{section}/{index}/{key}",
                        ProblemCode.DUPLICATE_ENTRY,
                        f"{key} {value!r} appears twice",
                    )
                )
            seen.add(value)
    return problems


def _rules(lens_id: str, manifest: dict[str, Any]) -> list[Problem]:
    """The checks beyond the JSON Schema, on a manifest that already passed it."""
    problems: list[Problem] = []
    try:
        supported = SpecifierSet(manifest["concordVersion"])
    except InvalidSpecifier:
        problems.append(
            Problem(
                lens_id,
                "/concordVersion",
                ProblemCode.INVALID_VALUE,
                f"{manifest['concordVersion']!r} is not a version range like >=0.1,<1",
            )
        )
    else:
        if Version(concord_core.__version__) not in supported:
            problems.append(
                Problem(
                    lens_id,
                    "/concordVersion",
                    ProblemCode.INCOMPATIBLE_VERSION,
                    f"the lens supports Concord {supported}, this is {concord_core.__version__}",
                )
            )
    for section, key in (("views", "id"), ("actions", "id"), ("dataTypes", "name"), ("jobTypes", "type")):
        problems += _duplicates(lens_id, manifest, section, key)
    data_types = {entry["name"]: entry for entry in manifest["dataTypes"]}
    for index, entry in enumerate(manifest["dataTypes"]):
        try:
            Draft202012Validator.check_schema(entry["schema"])
        except SchemaError as exc:
            problems.append(
                Problem(lens_id, f"/dataTypes/{index}/schema", ProblemCode.INVALID_DATA_SCHEMA, exc.message)
            )
            continue
        item_validator = Draft202012Validator(entry["schema"])
        for seed_index, seed in enumerate(entry.get("seed", [])):
            for error in item_validator.iter_errors(seed):
                problems.append(
                    Problem(
                        lens_id,
                        f"/dataTypes/{index}/seed/{seed_index}{_pointer(error.absolute_path)}",
                        ProblemCode.INVALID_SEED,
                        error.message,
                    )
                )
    for index, view in enumerate(manifest["views"]):
        if "dataType" in view and view["dataType"] not in data_types:
            problems.append(
                Problem(
                    lens_id,
                    f"/views/{index}/dataType",
                    ProblemCode.UNKNOWN_DATA_TYPE,
                    f"no data type named {view['dataType']!r}",
                )
            )
    permissions = set(manifest["permissions"])
    for index, action in enumerate(manifest["actions"]):
        if action["permission"] not in permissions:
            problems.append(
                Problem(
                    lens_id,
                    f"/actions/{index}/permission",
                    ProblemCode.UNDECLARED_PERMISSION,
                    f"{action['permission']!r} is not among the lens's permissions",
                )
            )
    for index, fmt in enumerate(manifest["exportFormats"]):
        if fmt not in KNOWN_EXPORT_FORMATS:
            problems.append(
                Problem(
                    lens_id,
                    f"/exportFormats/{index}",
                    ProblemCode.UNKNOWN_EXPORT_FORMAT,
                    f"{fmt!r} is not one of {', '.join(sorted(KNOWN_EXPORT_FORMATS))}",
                )
            )
    for index, job in enumerate(manifest.get("jobTypes", [])):
        if not job["type"].startswith(f"{lens_id}."):
            problems.append(
                Problem(
                    lens_id,
                    f"/jobTypes/{index}/type",
                    ProblemCode.JOB_TYPE_PREFIX,
                    f"job types of this lens start with {lens_id + '.'!r}",
                )
            )
    return problems


def lens_id_of(manifest: Any, fallback: str) -> str:
    if isinstance(manifest, dict) and isinstance(manifest.get("lensId"), str) and manifest["lensId"]:
        return str(manifest["lensId"])
    return fallback


def validate_manifest(manifest: Any, fallback_id: str = "?") -> list[Problem]:
    """Every problem with a parsed manifest; an empty list means it is valid on its own."""
    lens_id = lens_id_of(manifest, fallback_id)
    problems = sorted(_schema_problem(lens_id, e) for e in _validator().iter_errors(manifest))
    if problems:
        return problems
    return _rules(lens_id, manifest)


def load_manifest_file(path: Path) -> tuple[Any, list[Problem]]:
    """Read a manifest.json (or a lens folder holding one); problems if it is missing or not JSON."""
    if path.is_dir():
        path = path / MANIFEST_FILE
    fallback = path.parent.name
    try:
        return json.loads(path.read_text("utf-8")), []
    except FileNotFoundError:
        return None, [Problem(fallback, "/", ProblemCode.NO_MANIFEST, f"{path} does not exist")]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [Problem(fallback, "/", ProblemCode.NOT_JSON, f"{path} is not JSON: {exc}")]
