"""Opaque global IDs (Relay): base64 of ``Type:key``. Clients never build or parse them."""

from __future__ import annotations

import base64
import binascii

from concord_core.browse.cursor import urlsafe_base64
from concord_core.operators.errors import OperatorError, not_found

#: The longest database key (a UUID in its canonical text form).
MAX_KEY_LENGTH = 36
#: The longest global ID worth decoding (base64 of the longest type name and key, with room to spare).
MAX_GLOBAL_ID_LENGTH = 200


def to_global_id(type_name: str, key: str) -> str:
    return urlsafe_base64(f"{type_name}:{key}")


def plausible_key(key: str) -> bool:
    """Whether ``key`` can be a database key at all. Others (over-long, or with NUL and other control
    characters, which PostgreSQL refuses in text) are never sent to the database: they are not found."""
    return 0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()


def from_global_id(global_id: str) -> tuple[str, str]:
    """Split a global ID into (type name, key); raises NOT_FOUND for anything malformed, including keys
    that cannot exist (see :func:`plausible_key`)."""
    if len(global_id) > MAX_GLOBAL_ID_LENGTH:
        raise not_found("node")
    try:
        raw = base64.urlsafe_b64decode(global_id + "=" * (-len(global_id) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise not_found("node") from None
    type_name, sep, key = raw.partition(":")
    if not sep or not type_name.isidentifier() or not plausible_key(key):
        raise not_found("node")
    return type_name, key


def expect_global_id(global_id: str, type_name: str, noun: str, field: str | None = None) -> str:
    """The key of a global ID that must name a ``type_name``; anything else is that thing not found."""
    try:
        found_type, key = from_global_id(global_id)
    except OperatorError:
        raise not_found(noun, field) from None
    if found_type != type_name:
        raise not_found(noun, field)
    return key
