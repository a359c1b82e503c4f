"""Object storage: content-addressed blobs (named by SHA-256) on local disk or S3.

Use :func:`open_store` to get the configured :class:`BlobStore`; see ``base.py`` for the interface and
``local.py`` / ``s3.py`` for the implementations and their durability guarantees.
"""

from concord_core.storage.base import BlobStore
from concord_core.storage.blob import CHUNK_SIZE, BlobRef, is_sha256, validate_sha256
from concord_core.storage.errors import BlobCorrupted, BlobNotFound, BlobTooLarge, StorageError
from concord_core.storage.factory import open_store
from concord_core.storage.hashing import ReadableStream
from concord_core.storage.local import LocalStore
from concord_core.storage.s3 import S3Store

__all__ = [
    "CHUNK_SIZE",
    "BlobCorrupted",
    "BlobNotFound",
    "BlobRef",
    "BlobStore",
    "BlobTooLarge",
    "LocalStore",
    "ReadableStream",
    "S3Store",
    "StorageError",
    "is_sha256",
    "open_store",
    "validate_sha256",
]
