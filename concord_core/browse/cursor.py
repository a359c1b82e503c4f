"""Opaque keyset cursors: the sort-key values of a row, so the next page starts right after it."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from concord_core.operators.errors import ErrorCode, OperatorError


def _plain(value: Any) -> Any:
    return {"t": value.isoformat()} if isinstance(value, datetime) else value


def _typed(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"t"}:
        return datetime.fromisoformat(value["t"])
    return value


def encode_cursor(order: str, values: tuple[Any, ...]) -> str:
    raw = json.dumps([order, [_plain(v) for v in values]], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: str, arity: int) -> tuple[Any, ...]:
    """The sort-key values in ``cursor``; VALIDATION error if it is malformed or from another ordering."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_order, values = json.loads(raw)
        if cursor_order != order or not isinstance(values, list) or len(values) != arity:
            raise ValueError
        return tuple(_typed(v) for v in values)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise OperatorError.single(
            ErrorCode.VALIDATION, "the cursor is not valid for this query", "after"
        ) from None
