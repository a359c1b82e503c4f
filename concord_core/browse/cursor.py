"""Opaque keyset cursors: the sort-key values of a row, so the next page starts right after it."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any

from concord_core.operators.errors import ErrorCode, OperatorError


def _typed(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"t"}:
        return datetime.fromisoformat(value["t"])
    return value


_json_string = encode_basestring_ascii
_json_other = json.JSONEncoder(separators=(",", ":")).encode
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def urlsafe_base64(text: str) -> str:
    """``text`` (UTF-8) in URL-safe base64 without padding: ``base64.urlsafe_b64encode`` without its
    layers of calls (a page makes a cursor and a global ID per item)."""
    return binascii.b2a_base64(text.encode(), newline=False).translate(_URLSAFE).decode().rstrip("=")


def _key_json(value: Any) -> str:
    """A sort-key value as compact JSON, a timestamp as ``{"t": ISO 8601}``."""
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, datetime):
        return '{"t":"' + value.isoformat() + '"}'
    return _json_other(value)


def encode_cursor(order: str, values: tuple[Any, ...]) -> str:
    """``[order, [value, ...]]`` as compact JSON in URL-safe base64 without padding (built by hand, as
    ``json.dumps`` would with separators ``(",", ":")``: a page makes one cursor per row)."""
    return urlsafe_base64("[" + _json_string(order) + ",[" + ",".join(map(_key_json, values)) + "]]")


def _fits(value: Any, kind: type) -> bool:
    """Whether a decoded value can stand for a sort key of ``kind`` (a forged cursor's cannot)."""
    if kind is datetime:
        return isinstance(value, datetime) and value.tzinfo is not None
    if kind is str:
        return isinstance(value, str) and "\x00" not in value
    return isinstance(value, int | float) and not isinstance(value, bool)  # a computed rank


def decode_cursor(cursor: str, order: str, kinds: Sequence[type], field: str = "after") -> tuple[Any, ...]:
    """The sort-key values in ``cursor``, one of each of ``kinds``; VALIDATION error (naming ``field``) if
    it is malformed, forged or from another ordering."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_order, values = json.loads(raw)
        if cursor_order != order or not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError
        typed = tuple(_typed(v) for v in values)
        if not all(_fits(value, kind) for value, kind in zip(typed, kinds, strict=True)):
            raise ValueError
        return typed
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise OperatorError.single(
            ErrorCode.VALIDATION, "the cursor is not valid for this query", field
        ) from None
