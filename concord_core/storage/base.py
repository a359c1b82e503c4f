"""The object store interface: what every blob store implementation must provide."""

from __future__ import annotations

import abc
import io
from collections.abc import Iterator
from typing import BinaryIO

from concord_core.storage.blob import CHUNK_SIZE, BlobRef
from concord_core.storage.hashing import ReadableStream


class BlobStore(abc.ABC):
    """A content-addressed blob store: blobs are named by the SHA-256 of their bytes.

    Writes are idempotent (the same bytes give the same :class:`BlobRef` and one stored object) and
    atomic (a blob is never visible under its hash until all of it is durably stored). Reads verify the
    content against the hash. Every method taking a ``sha256`` raises ValueError unless it is 64
    lowercase hex digits.
    """

    def __init__(self, *, default_max_bytes: int | None = None) -> None:
        if default_max_bytes is not None and default_max_bytes < 0:
            raise ValueError(f"default_max_bytes must be >= 0, got {default_max_bytes}")
        self.default_max_bytes = default_max_bytes

    def _limit(self, max_bytes: int | None) -> int | None:
        return self.default_max_bytes if max_bytes is None else max_bytes

    @abc.abstractmethod
    def put_stream(self, stream: ReadableStream | BinaryIO, *, max_bytes: int | None = None) -> BlobRef:
        """Store everything read from ``stream``, in constant memory, and return its reference.

        ``max_bytes`` (default: the store's ``default_max_bytes``; None there means no limit) bounds the
        upload: :class:`BlobTooLarge` is raised as soon as more was read, and nothing is left behind.
        """

    def put_bytes(self, data: bytes, *, max_bytes: int | None = None) -> BlobRef:
        """Store ``data`` and return its reference."""
        return self.put_stream(io.BytesIO(data), max_bytes=max_bytes)

    @abc.abstractmethod
    def open_chunks(self, sha256: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream a blob's content in chunks.

        :class:`BlobNotFound` is raised by this call (before any chunk) for a missing blob. The content is
        hashed as it goes and :class:`BlobCorrupted` is raised after the last chunk if it does not match.
        """

    def read_bytes(self, sha256: str) -> bytes:
        """Return a whole blob, verified before it is returned (small blobs only)."""
        return b"".join(self.open_chunks(sha256))

    @abc.abstractmethod
    def exists(self, sha256: str) -> bool:
        """True if a blob is stored under ``sha256``."""

    @abc.abstractmethod
    def size(self, sha256: str) -> int:
        """The stored size in bytes; :class:`BlobNotFound` if missing."""

    @abc.abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove a blob (garbage collection); deleting a missing blob is not an error."""

    @abc.abstractmethod
    def iter_hashes(self) -> Iterator[str]:
        """Yield the hash of every stored blob (for backup and garbage collection)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Readiness probe: raise :class:`StorageError` with a clear message if the store is unusable."""
