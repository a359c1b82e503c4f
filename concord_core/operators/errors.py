"""Typed operator errors. Every failure a client can cause maps to one code and writes nothing."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydantic import ValidationError


class ErrorCode(enum.StrEnum):
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    VALIDATION = "VALIDATION"
    CONFLICT = "CONFLICT"
    RATE_LIMITED = "RATE_LIMITED"
    TOO_LARGE = "TOO_LARGE"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldError:
    """One problem: the input field it concerns (dotted path, or None), a code and a readable message."""

    field: str | None
    code: ErrorCode
    message: str


class OperatorError(Exception):
    """An operation was refused. ``errors`` lists every problem found, not just the first."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field or '-'}: {e.code}: {e.message}" for e in errors))
        self.errors = errors

    @property
    def code(self) -> ErrorCode:
        return self.errors[0].code

    @classmethod
    def single(cls, code: ErrorCode, message: str, field: str | None = None) -> OperatorError:
        return cls([FieldError(field, code, message)])


def not_found(what: str, field: str | None = None) -> OperatorError:
    return OperatorError.single(ErrorCode.NOT_FOUND, f"{what} not found", field)


def from_validation_error(exc: ValidationError, prefix: str = "") -> OperatorError:
    errors = []
    for item in exc.errors():
        path = ".".join(str(part) for part in item["loc"])
        errors.append(
            FieldError(f"{prefix}{path}" if path else prefix or None, ErrorCode.VALIDATION, item["msg"])
        )
    return OperatorError(errors)
