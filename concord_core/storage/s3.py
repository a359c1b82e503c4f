"""S3 object store: blobs as objects in an S3-compatible bucket (AWS S3, MinIO, ...).

Key layout: ``{prefix}/{sha[:2]}/{sha}``, with the SHA-256 also in the object metadata (``sha256``).
An upload is spooled to a temporary file on disk while it is hashed (constant memory, whatever its
size), then sent only if the key is not already there: in one PUT carrying our SHA-256 as its
``x-amz-checksum-sha256`` (S3 rejects the object unless it stored exactly the bytes we hashed), or as a
multipart upload with a SHA-256 checksum on every part for big blobs. S3 PUTs are atomic, so a blob is
never visible half-written. Reads are verified against the hash as they stream.
"""

from __future__ import annotations

import base64
import functools
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError, NoCredentialsError

from concord_core.storage.base import BlobStore
from concord_core.storage.blob import CHUNK_SIZE, BlobRef, is_sha256, validate_sha256
from concord_core.storage.errors import BlobCorrupted, BlobNotFound, StorageError
from concord_core.storage.hashing import ReadableStream, VerifiedChunks, copy_hashed

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
METADATA_SHA256 = "sha256"
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


_SESSION_LOCK = threading.Lock()


@functools.cache
def _shared_session() -> boto3.session.Session:
    """One boto3 session for all stores: loading the S3 service model once makes new clients cheap."""
    return boto3.session.Session()


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_not_found(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _error_code(exc) in _NOT_FOUND_CODES or status == 404


class S3Store(BlobStore):
    """Blobs stored in ``bucket`` under ``prefix`` (see the module docstring for the guarantees).

    ``addressing_style`` is ``auto``, ``path`` or ``virtual``; ``auto`` means path style when an
    ``endpoint_url`` is given (MinIO and most S3-compatible servers) and the AWS default otherwise.
    Without ``access_key``/``secret_key`` the usual AWS credential chain (environment, profile, instance
    role) applies. The keyword-only arguments tune transfers and are rarely needed; uploads are spooled
    to ``spool_dir`` (default: the system temp directory, ``$TMPDIR``), which must be on disk, not tmpfs,
    and have room for the largest upload.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        addressing_style: str = "auto",
        *,
        default_max_bytes: int | None = None,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        max_concurrency: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        spool_dir: Path | str | None = None,
    ) -> None:
        super().__init__(default_max_bytes=default_max_bytes)
        if not bucket:
            raise ValueError("S3Store needs a bucket name")
        if addressing_style not in ("auto", "path", "virtual"):
            raise ValueError(f"addressing_style must be auto, path or virtual, not {addressing_style!r}")
        if multipart_chunksize < 5 * MiB:
            raise ValueError("multipart_chunksize must be at least 5 MiB (the S3 minimum part size)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.multipart_threshold = multipart_threshold
        style: Literal["auto", "path", "virtual"] = "auto"
        if addressing_style == "path" or (addressing_style == "auto" and self.endpoint_url):
            style = "path"
        elif addressing_style == "virtual":
            style = "virtual"
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": style},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max(10, max_concurrency + 2),
            request_checksum_calculation="when_supported",
            response_checksum_validation="when_supported",
        )
        with _SESSION_LOCK:  # sessions are not thread-safe; the clients they make are
            self.client: S3Client = _shared_session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=access_key or None,
                aws_secret_access_key=secret_key or None,
                config=config,
            )
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
            use_threads=max_concurrency > 1,
            preferred_transfer_client="classic",
        )

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Store(s3://{self.bucket}/{self.prefix}{where})"

    @property
    def _where(self) -> str:
        endpoint = self.endpoint_url or "AWS"
        return f"s3://{self.bucket}/{self.prefix} ({endpoint})"

    def key_for(self, sha256: str) -> str:
        """The object key of the blob ``sha256``."""
        validate_sha256(sha256)
        name = f"{sha256[:2]}/{sha256}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _failure(self, action: str, exc: Exception) -> StorageError:
        return StorageError(f"cannot {action} in {self._where}: {exc}")

    def _head(self, key: str) -> Mapping[str, Any] | None:
        """The object's metadata, or None if there is no such object."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise self._failure("look up an object", exc) from exc
        except BotoCoreError as exc:
            raise self._failure("look up an object", exc) from exc

    @contextmanager
    def _spool_file(self) -> Iterator[IO[bytes]]:
        """A named temp file (removed on exit) that ``upload_file`` can re-open part by part."""
        try:
            spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed by the ``with`` below)
                prefix="concord-s3-", suffix=".part", dir=self.spool_dir
            )
        except OSError as exc:
            raise StorageError(f"cannot create a spool file for {self._where}: {exc}") from exc
        with spool:
            yield spool

    def put_stream(self, stream: ReadableStream | BinaryIO, *, max_bytes: int | None = None) -> BlobRef:
        limit = self._limit(max_bytes)
        with self._spool_file() as spool:

            def write(chunk: bytes) -> None:
                # Errors reading ``stream`` are the caller's and propagate unchanged; ours are wrapped.
                try:
                    spool.write(chunk)
                except OSError as exc:
                    raise StorageError(f"cannot spool an upload for {self._where}: {exc}") from exc

            ref = copy_hashed(stream, write, max_bytes=limit)
            try:
                spool.flush()
            except OSError as exc:
                raise StorageError(f"cannot spool an upload for {self._where}: {exc}") from exc
            key = self.key_for(ref.sha256)
            existing = self._head(key)
            if existing is not None and existing.get("ContentLength") == ref.size:
                return ref
            self._upload(spool.name, key, ref)
        return ref

    def _upload(self, path: str, key: str, ref: BlobRef) -> None:
        extra: dict[str, Any] = {
            "Metadata": {METADATA_SHA256: ref.sha256},
            "ContentType": "application/octet-stream",
        }
        if ref.size < self.multipart_threshold:
            # One PUT: S3 checks the stored bytes against the hash we computed from the caller's stream.
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(ref.sha256)).decode("ascii")
        else:
            # Multipart: every part carries its own SHA-256 checksum, verified by S3.
            extra["ChecksumAlgorithm"] = "SHA256"
        try:
            # upload_file (not upload_fileobj) reads each part lazily from disk: constant memory.
            self.client.upload_file(path, self.bucket, key, ExtraArgs=extra, Config=self._transfer_config)
        except (S3UploadFailedError, ClientError, BotoCoreError) as exc:
            raise self._failure(f"upload blob {ref.sha256}", exc) from exc

    def open_chunks(self, sha256: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        key = self.key_for(sha256)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                raise BlobNotFound(sha256) from None
            raise self._failure(f"read blob {sha256}", exc) from exc
        except BotoCoreError as exc:
            raise self._failure(f"read blob {sha256}", exc) from exc
        body = response["Body"]
        return VerifiedChunks(sha256, self._translated(sha256, body.iter_chunks(chunk_size)), body.close)

    def _translated(self, sha256: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Pass chunks through, turning backend errors mid-stream into storage errors."""
        try:
            yield from chunks
        except FlexibleChecksumError as exc:  # the server's own checksum did not match what arrived
            raise BlobCorrupted(sha256) from exc
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._failure(f"read blob {sha256}", exc) from exc

    def exists(self, sha256: str) -> bool:
        return self._head(self.key_for(sha256)) is not None

    def size(self, sha256: str) -> int:
        head = self._head(self.key_for(sha256))
        if head is None:
            raise BlobNotFound(sha256)
        return int(head["ContentLength"])

    def delete(self, sha256: str) -> None:
        key = self.key_for(sha256)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(f"delete blob {sha256}", exc) from exc

    def iter_hashes(self) -> Iterator[str]:
        """Every stored blob's hash, in key order; other objects in the bucket are skipped."""
        paginator = self.client.get_paginator("list_objects_v2")
        list_prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=list_prefix):
                for item in page.get("Contents", []):
                    key = item.get("Key", "")
                    name = key.rsplit("/", 1)[-1]
                    if is_sha256(name) and key == self.key_for(name):
                        yield name
        except (ClientError, BotoCoreError) as exc:
            raise self._failure("list blobs", exc) from exc

    def check(self) -> None:
        """HEAD the bucket: proves the endpoint answers, the bucket exists and the credentials work."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = _error_code(exc)
            if _is_not_found(exc):
                raise StorageError(f"S3 bucket {self.bucket!r} does not exist at {self._where}") from exc
            if code in ("403", "AccessDenied", "Forbidden"):
                raise StorageError(
                    f"access to S3 bucket {self.bucket!r} denied at {self._where}: check the credentials"
                ) from exc
            raise StorageError(f"S3 bucket {self.bucket!r} is not usable at {self._where}: {exc}") from exc
        except NoCredentialsError as exc:
            raise StorageError(f"no S3 credentials configured for {self._where}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot reach the S3 endpoint for {self._where}: {exc}") from exc
