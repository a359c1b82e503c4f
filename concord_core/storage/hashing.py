"""Streaming hashing: copy a stream while hashing it under a size limit, and verify content as it is read."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import BinaryIO, Protocol

from concord_core.storage.blob import CHUNK_SIZE, BlobRef
from concord_core.storage.errors import BlobCorrupted, BlobTooLarge, StorageError


class ReadableStream(Protocol):
    """What uploads are read from: anything with ``read(size) -> bytes`` (a ``BinaryIO``, an
    ``io.RawIOBase``, an upload's spooled file, ...). An empty result means the end of the stream."""

    def read(self, size: int = -1, /) -> bytes | None: ...


def copy_hashed(
    stream: ReadableStream | BinaryIO,
    write: Callable[[bytes], object],
    *,
    max_bytes: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> BlobRef:
    """Copy ``stream`` to ``write`` chunk by chunk, returning the SHA-256 and size of what was copied.

    Only one chunk is held in memory at a time. Raises :class:`BlobTooLarge` as soon as more than
    ``max_bytes`` have been read (the caller discards whatever ``write`` received).
    """
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    digest = hashlib.sha256()
    total = 0
    while True:
        chunk = stream.read(chunk_size)
        if chunk is None:  # a non-blocking raw stream with nothing available
            raise StorageError("cannot store from a non-blocking stream")
        if not chunk:
            break
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise BlobTooLarge(max_bytes)
        digest.update(chunk)
        write(chunk)
    return BlobRef(sha256=digest.hexdigest(), size=total)


class VerifiedChunks(Iterator[bytes]):
    """Yield a blob's chunks while hashing them; raise :class:`BlobCorrupted` at the end on a mismatch.

    The source is closed when the iteration ends (normally or not) or on :meth:`close`; the object is
    also a context manager so an abandoned download can be closed deterministically.
    """

    def __init__(self, sha256: str, chunks: Iterable[bytes], close: Callable[[], object]) -> None:
        self.sha256 = sha256
        self._chunks = iter(chunks)
        self._close = close
        self._digest = hashlib.sha256()
        self._closed = False

    def __iter__(self) -> VerifiedChunks:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.close()
            actual = self._digest.hexdigest()
            if actual != self.sha256:
                raise BlobCorrupted(self.sha256, actual) from None
            raise
        except BaseException:
            self.close()
            raise
        self._digest.update(chunk)
        return chunk

    def close(self) -> None:
        """Release the underlying file or connection (idempotent)."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> VerifiedChunks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
