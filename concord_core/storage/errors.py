"""Storage errors: the exceptions every object store raises, so callers never see backend types."""

from __future__ import annotations


class StorageError(Exception):
    """The object store failed (unreachable, not writable, or a backend error)."""


class BlobNotFound(StorageError):
    """No blob is stored under the requested hash."""

    def __init__(self, sha256: str) -> None:
        super().__init__(f"blob {sha256} not found")
        self.sha256 = sha256


class BlobCorrupted(StorageError):
    """The stored bytes do not hash to the name they are stored under."""

    def __init__(self, sha256: str, actual: str | None = None) -> None:
        detail = f": its content hashes to {actual}" if actual else ""
        super().__init__(f"blob {sha256} is corrupted{detail}")
        self.sha256 = sha256
        self.actual = actual


class BlobTooLarge(StorageError):
    """An upload went over its byte limit; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"blob exceeds the limit of {limit} bytes")
        self.limit = limit
