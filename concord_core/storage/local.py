"""Local object store: blobs as files under a root directory, written atomically and durably.

Layout: ``root/ab/cd/<sha256>`` for blobs, ``root/tmp/`` for uploads in progress. A blob is written to
a temp file in ``root/tmp`` (same filesystem), fsynced, renamed into place with :func:`os.replace` and
its directory fsynced, so a crash at any point leaves at most a temp file (see :meth:`LocalStore.sweep_temp`)
and never a partial blob under its hash name.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from concord_core.storage.base import BlobStore
from concord_core.storage.blob import CHUNK_SIZE, BlobRef, is_sha256, validate_sha256
from concord_core.storage.errors import BlobNotFound, StorageError
from concord_core.storage.hashing import ReadableStream, VerifiedChunks, copy_hashed

TEMP_DIR_NAME = "tmp"
_TEMP_PREFIX = "put-"
_PROBE_PREFIX = "probe-"
_HEX2 = frozenset(f"{i:02x}" for i in range(256))


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new child) durable."""
    if os.name != "posix":  # directories cannot be opened for fsync elsewhere
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a file's content durable (one written and closed elsewhere)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents, fsyncing each parent that gained an entry."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # created concurrently; a file in the way fails at the next step
        fsync_dir(directory.parent)


class LocalStore(BlobStore):
    """Blobs stored as files under ``root`` (see the module docstring for the layout and guarantees)."""

    def __init__(self, root: Path | str, *, default_max_bytes: int | None = None) -> None:
        super().__init__(default_max_bytes=default_max_bytes)
        self.root = Path(root)
        self.temp_dir = self.root / TEMP_DIR_NAME

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path_for(self, sha256: str) -> Path:
        """Where the blob ``sha256`` lives (whether or not it exists)."""
        validate_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    @contextmanager
    def _os_errors(self, action: str) -> Iterator[None]:
        """Turn an OSError from the filesystem into a StorageError naming the store."""
        try:
            yield
        except OSError as exc:
            raise StorageError(f"cannot {action} in local object store {self.root}: {exc}") from exc

    def put_stream(self, stream: ReadableStream | BinaryIO, *, max_bytes: int | None = None) -> BlobRef:
        limit = self._limit(max_bytes)
        with self._os_errors("create a temp file"):
            make_dirs(self.temp_dir)
            fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".part", dir=self.temp_dir)
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as out:

                def write(chunk: bytes) -> None:
                    # Errors reading ``stream`` are the caller's and propagate unchanged; ours are wrapped.
                    with self._os_errors("write a blob"):
                        out.write(chunk)

                ref = copy_hashed(stream, write, max_bytes=limit)
                with self._os_errors("write a blob"):
                    out.flush()
                    os.fsync(out.fileno())
            with self._os_errors("store a blob"):
                self._commit(temp, ref)
            return ref
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def _commit(self, temp: Path, ref: BlobRef) -> None:
        """Move a complete, fsynced temp file to its hash name, unless the blob is already there."""
        target = self.path_for(ref.sha256)
        try:
            already_stored = target.stat().st_size == ref.size
        except FileNotFoundError:
            already_stored = False
        if already_stored:
            temp.unlink()
            return
        # A missing blob, or a damaged one of the wrong size, is (re)placed atomically.
        make_dirs(target.parent)
        os.replace(temp, target)
        fsync_dir(target.parent)

    def open_chunks(self, sha256: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        path = self.path_for(sha256)
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise BlobNotFound(sha256) from None
        except OSError as exc:
            raise StorageError(f"cannot read blob {sha256} from {self.root}: {exc}") from exc
        return VerifiedChunks(sha256, iter(functools.partial(file.read, chunk_size), b""), file.close)

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def size(self, sha256: str) -> int:
        path = self.path_for(sha256)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(sha256) from None
        except OSError as exc:
            raise StorageError(f"cannot stat blob {sha256} in {self.root}: {exc}") from exc

    def delete(self, sha256: str) -> None:
        path = self.path_for(sha256)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete blob {sha256} from {self.root}: {exc}") from exc

    def iter_hashes(self) -> Iterator[str]:
        """Every stored blob's hash, in sorted order; stray files and temp files are skipped."""
        for first in self._subdirs(self.root):
            for second in self._subdirs(first):
                try:
                    names = sorted(entry.name for entry in os.scandir(second) if entry.is_file())
                except FileNotFoundError:
                    continue
                for name in names:
                    if is_sha256(name) and name[:2] == first.name and name[2:4] == second.name:
                        yield name

    @staticmethod
    def _subdirs(directory: Path) -> list[Path]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        return sorted(Path(e.path) for e in entries if e.name in _HEX2 and e.is_dir())

    def check(self) -> None:
        """Create the root if needed and prove it is writable by writing, fsyncing and removing a file."""
        try:
            make_dirs(self.temp_dir)
            fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=self.temp_dir)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise StorageError(f"local object store {self.root} is not writable: {exc}") from exc

    def sweep_temp(self, older_than_seconds: float = 24 * 3600) -> int:
        """Remove temp files (left by crashed or killed uploads) older than the given age; return how many.

        Uploads in progress keep touching their temp file, so an age well above the longest upload is safe.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        try:
            entries = list(os.scandir(self.temp_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
