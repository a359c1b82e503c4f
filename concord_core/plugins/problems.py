"""Validation problems: ``lensId: json/path: code: message``, with stable codes lens authors can rely on."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ProblemCode(enum.StrEnum):
    NOT_JSON = "manifest.not_json"
    MISSING_FIELD = "manifest.missing_field"
    WRONG_TYPE = "manifest.wrong_type"
    INVALID_VALUE = "manifest.invalid_value"
    UNKNOWN_FIELD = "manifest.unknown_field"
    UNKNOWN_CAPABILITY = "manifest.unknown_capability"
    DUPLICATE_ENTRY = "manifest.duplicate_entry"
    INVALID_DATA_SCHEMA = "manifest.invalid_data_schema"
    INVALID_SEED = "manifest.invalid_seed"
    UNKNOWN_DATA_TYPE = "manifest.unknown_data_type"
    UNKNOWN_EXPORT_FORMAT = "manifest.unknown_export_format"
    UNDECLARED_PERMISSION = "manifest.undeclared_permission"
    DUPLICATE_LENS_ID = "lens.duplicate_id"
    INCOMPATIBLE_VERSION = "lens.incompatible_version"
    LOAD_FAILED = "lens.load_failed"
    UNKNOWN_HOOK = "lens.unknown_hook"
    NO_MANIFEST = "lens.no_manifest"
    HOOK_FAILED = "lens.hook_failed"
    MISSING_HANDLER = "jobs.missing_handler"
    UNDECLARED_HANDLER = "jobs.undeclared_handler"
    JOB_TYPE_PREFIX = "jobs.wrong_prefix"
    HANDLER_NOT_CALLABLE = "jobs.handler_not_callable"
    MISSING_RESOLVER = "actions.missing_resolver"
    NOT_A_STRAWBERRY_TYPE = "graphql.not_a_type"
    FIELD_COLLISION = "graphql.field_collision"
    TYPE_COLLISION = "graphql.type_collision"
    NOT_A_BROWSABLE = "global.not_a_browsable"
    BROWSABLE_COLLISION = "global.browsable_collision"


@dataclass(frozen=True, order=True)
class Problem:
    lens_id: str
    path: str  # a JSON pointer into the manifest ("/capabilities/teleport"), or "/" for the lens as a whole
    code: ProblemCode
    message: str

    def __str__(self) -> str:
        return f"{self.lens_id}: {self.path}: {self.code.value}: {self.message}"
