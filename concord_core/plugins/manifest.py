"""Manifest validation: the published JSON Schema, then the rules a schema cannot say.

:func:`validate_manifest` reports every problem, each with a stable code, never just the first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

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


def item_data_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """The validator for a data type's items: the schema as written, with ``format`` asserted (JSON Schema
    2020-12 only annotates it by default, so ``"format": "uri"`` would otherwise accept anything)."""
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _pointer(parts: Any) -> str:
    return "/" + "/".join(str(part) for part in parts)


def _schema_problems(lens_id: str, error: ValidationError) -> list[Problem]:
    path = _pointer(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [
            Problem(
                lens_id, _pointer([*error.absolute_path, missing]), ProblemCode.MISSING_FIELD, error.message
            )
        ]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # One problem per unknown key, at its own path ("/capabilities/teleport"), so each can be fixed.
        capability = list(error.absolute_path) == ["capabilities"]
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        return [
            Problem(
                lens_id,
                _pointer([*error.absolute_path, key]),
                ProblemCode.UNKNOWN_CAPABILITY if capability else ProblemCode.UNKNOWN_FIELD,
                f"{'capability' if capability else 'field'} {key!r} is not allowed here",
            )
            for key in error.instance
            if key not in known
        ]
    if error.validator == "type":
        return [Problem(lens_id, path, ProblemCode.WRONG_TYPE, error.message)]
    return [Problem(lens_id, path, ProblemCode.INVALID_VALUE, error.message)]


_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})  # their values are data, not schemas


def _refs(schema: Any) -> Iterator[str]:
    """Every ``$ref`` in a schema, except inside subschemas with an ``$id`` of their own."""
    if isinstance(schema, dict):
        if isinstance(schema.get("$ref"), str):
            yield schema["$ref"]
        for key, value in schema.items():
            if key not in _DATA_KEYWORDS and not (isinstance(value, dict) and "$id" in value):
                yield from _refs(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _refs(value)


def _unresolvable_refs(schema: dict[str, Any]) -> list[str]:
    """The ``$ref``s that point nowhere (jsonschema resolves them lazily, so one would otherwise only fail
    when an item reaches it; nothing is fetched from the network)."""
    resource = DRAFT202012.create_resource(schema)
    base = resource.id() or ""
    resolver = Registry().with_resource(base, resource).resolver(base)
    missing = []
    for ref in _refs(schema):
        try:
            resolver.lookup(ref)
        except Unresolvable:
            missing.append(ref)
    return missing


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
        missing = _unresolvable_refs(entry["schema"])
        if missing:
            problems.append(
                Problem(
                    lens_id,
                    f"/dataTypes/{index}/schema",
                    ProblemCode.INVALID_DATA_SCHEMA,
                    f"$ref {', '.join(map(repr, missing))} cannot be resolved",
                )
            )
            continue
        item_validator = item_data_validator(entry["schema"])
        for seed_index, seed in enumerate(entry.get("seed", [])):
            try:
                errors = list(item_validator.iter_errors(seed))
            except Unresolvable as exc:  # a $ref under a nested $id that points nowhere
                problems.append(
                    Problem(lens_id, f"/dataTypes/{index}/schema", ProblemCode.INVALID_DATA_SCHEMA, str(exc))
                )
                break
            for error in errors:
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
    problems = sorted(p for e in _validator().iter_errors(manifest) for p in _schema_problems(lens_id, e))
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


def manifest_path(path: Path) -> Path:
    """The manifest file a path names (a lens folder names the manifest inside it), resolved."""
    return (path / MANIFEST_FILE if path.is_dir() else path).resolve()


def validate_manifest_files(paths: list[Path]) -> list[Problem]:
    """Every problem with the given manifests (or lens folders), including a lensId two of them share."""
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    checked: set[Path] = set()
    for path in paths:
        if manifest_path(path) in checked:  # the same manifest named twice (a folder and its file, say)
            continue
        checked.add(manifest_path(path))
        manifest, found = load_manifest_file(path)
        fallback = (path if path.is_dir() else path.parent).resolve().name
        problems += found or validate_manifest(manifest, fallback)
        lens_id = lens_id_of(manifest, "")
        if lens_id in seen:
            problems.append(
                Problem(lens_id, "/lensId", ProblemCode.DUPLICATE_LENS_ID, f"{seen[lens_id]} also uses it")
            )
        elif lens_id:
            seen[lens_id] = path
    return problems
