"""Blob identity: the :class:`BlobRef` value and the validation of SHA-256 names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeGuard

CHUNK_SIZE = 1024 * 1024
"""Bytes read or yielded at a time when streaming a blob (1 MiB)."""

_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: object) -> TypeGuard[str]:
    """True if ``value`` is a SHA-256 digest spelled as 64 lowercase hex digits."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def validate_sha256(value: object) -> str:
    """Return ``value`` if it is a valid blob name; raise ValueError otherwise.

    Blob names become file paths and object keys, so anything but 64 lowercase hex digits is refused
    (this is what keeps ``../`` and friends out of the store).
    """
    if not is_sha256(value):
        raise ValueError(f"not a SHA-256 hex digest (64 lowercase hex digits): {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A stored blob: its SHA-256 (hex) and its size in bytes."""

    sha256: str
    size: int

    def __post_init__(self) -> None:
        validate_sha256(self.sha256)
        if self.size < 0:
            raise ValueError(f"blob size must be >= 0, got {self.size}")
