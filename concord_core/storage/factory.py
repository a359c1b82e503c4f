"""Store selection: build the configured :class:`BlobStore` from settings."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from concord_core.settings import Settings
from concord_core.storage.base import BlobStore
from concord_core.storage.local import LocalStore
from concord_core.storage.s3 import S3Store


def open_store(settings: Settings) -> BlobStore:
    """The object store named by ``settings.resolved_storage_url``.

    A plain path or ``file:///path`` gives a :class:`LocalStore`; ``s3://bucket/prefix`` an
    :class:`S3Store` using the ``s3_*`` settings. Uploads are limited to ``settings.max_upload_bytes``
    unless a call passes its own ``max_bytes``. Nothing is contacted here: call ``check()`` for that.
    """
    url = settings.resolved_storage_url
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"s3 storage URLs need a bucket (s3://bucket/prefix): {url!r}")
        return S3Store(
            bucket=parsed.netloc,
            prefix=parsed.path.strip("/"),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key=settings.s3_access_key_id,
            secret_key=settings.s3_secret_access_key,
            addressing_style=settings.s3_addressing_style,
            default_max_bytes=settings.max_upload_bytes,
        )
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file storage URLs must be local (file:///path): {url!r}")
        root = Path(url2pathname(parsed.path))
    elif parsed.scheme == "":
        root = Path(url)
    else:
        raise ValueError(f"unsupported storage URL {url!r}: use a path, file:///path or s3://bucket/prefix")
    return LocalStore(root.expanduser().resolve(), default_max_bytes=settings.max_upload_bytes)
