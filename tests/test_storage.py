"""Object store tests: every behaviour runs against LocalStore and against S3Store talking HTTP to a real
S3-compatible server (moto's ThreadedMotoServer, started in a child process so that its memory is not
counted by the streaming tests' tracemalloc and a crash of ours cannot leave it running)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from concord_core.settings import load_settings
from concord_core.storage import (
    CHUNK_SIZE,
    BlobCorrupted,
    BlobNotFound,
    BlobRef,
    BlobStore,
    BlobTooLarge,
    LocalStore,
    S3Store,
    StorageError,
    open_store,
)

MiB = 1024 * 1024
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
PREFIX = "blobs/v1"

# The child process: start ThreadedMotoServer on a free port, report it, live until stdin closes (which
# also happens if the test process dies, so the server never outlives the run).
_MOTO_SCRIPT = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


# --------------------------------------------------------------------------- helpers


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class GeneratedStream(io.RawIOBase):
    """``size`` deterministic bytes produced on demand: never all in memory at once."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.position = 0
        # An odd-length pattern so that chunks do not repeat on 1 MiB boundaries.
        self._pattern = hashlib.sha256(str(seed).encode()).digest() * 4099

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self.size - self.position)
        filled = 0
        while filled < count:
            offset = (self.position + filled) % len(self._pattern)
            piece = min(count - filled, len(self._pattern) - offset)
            view[filled : filled + piece] = self._pattern[offset : offset + piece]
            filled += piece
        self.position += count
        return count

    def expected_sha256(self) -> str:
        digest = hashlib.sha256()
        other = GeneratedStream(self.size)
        other._pattern = self._pattern
        while chunk := other.read(MiB):
            digest.update(chunk)
        return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a real S3-compatible HTTP server (moto) running for the whole session."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # werkzeug logs every request there
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        pytest.fail(f"moto server did not start (exit code {proc.wait()})")
    try:
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def raw_s3(s3_endpoint: str) -> Any:
    """A plain boto3 client on the test server, for setting up and tampering behind the store's back."""
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture
def bucket(raw_s3: Any) -> str:
    name = f"concord-test-{uuid.uuid4().hex[:16]}"
    raw_s3.create_bucket(Bucket=name)
    return name


def make_s3_store(endpoint: str, bucket: str, spool_dir: Path, **kwargs: Any) -> S3Store:
    spool_dir.mkdir(exist_ok=True)
    options: dict[str, Any] = {
        "multipart_threshold": 8 * MiB,
        "multipart_chunksize": 5 * MiB,
        "max_attempts": 1,
        "connect_timeout": 2.0,
        "spool_dir": spool_dir,
    }
    options.update(kwargs)
    return S3Store(
        bucket,
        PREFIX,
        endpoint_url=endpoint,
        region="us-east-1",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        addressing_style="path",
        **options,
    )


@dataclass
class Harness:
    """A store plus backend-specific ways to inspect and damage what it stored."""

    store: BlobStore
    stored_objects: Callable[[], list[str]]  # every object/file the store wrote, whatever its name
    temp_files: Callable[[], list[Path]]  # leftovers of uploads (must be empty between operations)
    overwrite: Callable[[str, bytes], None]  # replace a stored blob's content behind the store's back


def local_harness(tmp_path: Path) -> Harness:
    store = LocalStore(tmp_path / "objects")

    def stored_objects() -> list[str]:
        return sorted(
            str(p.relative_to(store.root))
            for p in store.root.rglob("*")
            if p.is_file() and store.temp_dir not in p.parents
        )

    def temp_files() -> list[Path]:
        return sorted(store.temp_dir.iterdir()) if store.temp_dir.exists() else []

    def overwrite(sha256: str, data: bytes) -> None:
        store.path_for(sha256).write_bytes(data)

    return Harness(store, stored_objects, temp_files, overwrite)


def s3_harness(endpoint: str, raw_s3: Any, bucket: str, tmp_path: Path) -> Harness:
    spool = tmp_path / "spool"
    store = make_s3_store(endpoint, bucket, spool)

    def stored_objects() -> list[str]:
        pages = raw_s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        keys = sorted(item["Key"] for page in pages for item in page.get("Contents", []))
        uploads = raw_s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return keys + [f"(unfinished multipart upload) {u['Key']}" for u in uploads]

    def temp_files() -> list[Path]:
        return sorted(spool.iterdir())

    def overwrite(sha256: str, data: bytes) -> None:
        raw_s3.put_object(Bucket=bucket, Key=store.key_for(sha256), Body=data)

    return Harness(store, stored_objects, temp_files, overwrite)


@pytest.fixture(params=["local", "s3"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "local":
        return local_harness(tmp_path)
    endpoint = request.getfixturevalue("s3_endpoint")
    raw_s3 = request.getfixturevalue("raw_s3")
    bucket = request.getfixturevalue("bucket")
    return s3_harness(endpoint, raw_s3, bucket, tmp_path)


@pytest.fixture
def store(harness: Harness) -> BlobStore:
    return harness.store


# --------------------------------------------------------------------------- both implementations


def test_round_trip(store: BlobStore) -> None:
    data = b"hello concord\n" * 1000
    ref = store.put_bytes(data)
    assert ref == BlobRef(sha256=sha(data), size=len(data))
    assert store.exists(ref.sha256)
    assert store.size(ref.sha256) == len(data)
    assert store.read_bytes(ref.sha256) == data
    assert b"".join(store.open_chunks(ref.sha256, chunk_size=1000)) == data
    assert all(len(c) <= 1000 for c in store.open_chunks(ref.sha256, chunk_size=1000))


def test_empty_blob(store: BlobStore) -> None:
    ref = store.put_bytes(b"")
    assert ref == BlobRef(sha(b""), 0)
    assert store.read_bytes(ref.sha256) == b""
    assert store.size(ref.sha256) == 0


def test_put_is_idempotent(harness: Harness) -> None:
    store = harness.store
    data = os.urandom(3000)
    first = store.put_bytes(data)
    second = store.put_stream(io.BytesIO(data))
    assert first == second
    assert len(harness.stored_objects()) == 1
    assert harness.temp_files() == []
    assert list(store.iter_hashes()) == [first.sha256]


def test_layout(harness: Harness) -> None:
    ref = harness.store.put_bytes(b"layout")
    h = ref.sha256
    if isinstance(harness.store, LocalStore):
        assert harness.stored_objects() == [f"{h[:2]}/{h[2:4]}/{h}"]
    else:
        assert harness.stored_objects() == [f"{PREFIX}/{h[:2]}/{h}"]


def test_corruption_is_detected(harness: Harness) -> None:
    store = harness.store
    data = b"A" * (2 * CHUNK_SIZE + 10)
    ref = store.put_bytes(data)
    harness.overwrite(ref.sha256, b"B" + data[1:])  # same size, one byte changed

    chunks = store.open_chunks(ref.sha256)
    assert next(iter(chunks))  # streaming starts: the mismatch is only known at the end
    with pytest.raises(BlobCorrupted) as excinfo:
        for _ in chunks:
            pass
    assert excinfo.value.sha256 == ref.sha256
    with pytest.raises(BlobCorrupted):
        store.read_bytes(ref.sha256)


def test_truncation_is_detected(harness: Harness) -> None:
    ref = harness.store.put_bytes(b"complete content")
    harness.overwrite(ref.sha256, b"complete")
    with pytest.raises(BlobCorrupted):
        harness.store.read_bytes(ref.sha256)


def test_put_heals_a_truncated_blob(harness: Harness) -> None:
    data = b"x" * 5000
    ref = harness.store.put_bytes(data)
    harness.overwrite(ref.sha256, data[:10])
    assert harness.store.put_bytes(data) == ref
    assert harness.store.read_bytes(ref.sha256) == data


def test_too_large_leaves_nothing(harness: Harness) -> None:
    store = harness.store
    kept = store.put_bytes(b"kept")
    stream = GeneratedStream(20 * MiB)
    with pytest.raises(BlobTooLarge) as excinfo:
        store.put_stream(stream, max_bytes=3 * MiB)
    assert excinfo.value.limit == 3 * MiB
    assert isinstance(excinfo.value, StorageError)
    assert stream.position <= 3 * MiB + CHUNK_SIZE  # stopped as soon as the limit was passed
    assert list(store.iter_hashes()) == [kept.sha256]
    assert len(harness.stored_objects()) == 1
    assert harness.temp_files() == []


def test_limit_is_inclusive(store: BlobStore) -> None:
    assert store.put_bytes(b"12345", max_bytes=5).size == 5
    with pytest.raises(BlobTooLarge):
        store.put_bytes(b"123456", max_bytes=5)


def test_default_limit_applies(store: BlobStore) -> None:
    store.default_max_bytes = 10
    with pytest.raises(BlobTooLarge):
        store.put_bytes(b"x" * 11)
    assert store.put_bytes(b"x" * 11, max_bytes=11).size == 11  # an explicit limit wins


def test_missing_blob(store: BlobStore) -> None:
    missing = sha(b"never stored")
    assert not store.exists(missing)
    with pytest.raises(BlobNotFound) as excinfo:
        store.open_chunks(missing)  # raised by the call itself, before any chunk is requested
    assert excinfo.value.sha256 == missing
    with pytest.raises(BlobNotFound):
        store.read_bytes(missing)
    with pytest.raises(BlobNotFound):
        store.size(missing)
    store.delete(missing)  # deleting nothing is fine


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "",
        "a" * 63,
        "a" * 65,
        "A" * 64,
        "g" * 64,
        "../" + "a" * 61,
        "ab/" + "a" * 61,
        " " + "a" * 63,
    ],
)
def test_invalid_hash_is_refused(store: BlobStore, bad: str) -> None:
    for operation in (store.open_chunks, store.read_bytes, store.exists, store.size, store.delete):
        with pytest.raises(ValueError):
            operation(bad)


def test_iter_hashes_and_delete(harness: Harness) -> None:
    store = harness.store
    refs = [store.put_bytes(f"blob {i}".encode()) for i in range(5)]
    assert sorted(store.iter_hashes()) == sorted(r.sha256 for r in refs)

    store.delete(refs[0].sha256)
    assert not store.exists(refs[0].sha256)
    with pytest.raises(BlobNotFound):
        store.read_bytes(refs[0].sha256)
    assert sorted(store.iter_hashes()) == sorted(r.sha256 for r in refs[1:])
    store.delete(refs[0].sha256)  # idempotent
    assert store.read_bytes(refs[1].sha256) == b"blob 1"


def test_large_stream_in_constant_memory(harness: Harness) -> None:
    """64 MiB go in and out without the process ever holding more than a few MiB of them."""
    store = harness.store
    size = 64 * MiB
    expected = GeneratedStream(size, seed=7).expected_sha256()

    tracemalloc.start()
    try:
        ref = store.put_stream(GeneratedStream(size, seed=7))
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = 0
        for chunk in store.open_chunks(ref.sha256):
            total += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert ref == BlobRef(expected, size)
    assert total == size
    assert store.size(ref.sha256) == size
    assert put_peak < 12 * MiB, f"put peak {put_peak / MiB:.1f} MiB"
    assert read_peak < 12 * MiB, f"read peak {read_peak / MiB:.1f} MiB"
    assert harness.temp_files() == []
    assert len(harness.stored_objects()) == 1


def test_concurrent_puts_of_the_same_content(harness: Harness) -> None:
    data = os.urandom(200_000)
    refs: list[BlobRef] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            refs.append(harness.store.put_bytes(data))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(refs) == {BlobRef(sha(data), len(data))}
    assert len(harness.stored_objects()) == 1
    assert harness.temp_files() == []
    assert harness.store.read_bytes(sha(data)) == data


def test_check_passes(store: BlobStore) -> None:
    store.check()


def test_stream_read_errors_propagate_unchanged(harness: Harness) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        harness.store.put_stream(Broken())
    assert harness.temp_files() == []
    assert harness.stored_objects() == []


# --------------------------------------------------------------------------- LocalStore specifics


def test_local_check_fails_when_root_is_not_a_directory(tmp_path: Path) -> None:
    root = tmp_path / "a-file"
    root.write_text("not a directory")
    with pytest.raises(StorageError, match="not writable"):
        LocalStore(root).check()


def test_local_check_creates_the_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "new" / "objects")
    store.check()
    assert store.temp_dir.is_dir()
    assert list(store.temp_dir.iterdir()) == []


def test_local_iter_hashes_skips_strays(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    ref = store.put_bytes(b"real")
    h = ref.sha256
    (tmp_path / "README").write_text("x")
    (tmp_path / h[:2] / h[2:4] / "notes.txt").write_text("x")
    misplaced = sha(b"misplaced")
    (tmp_path / h[:2] / h[2:4] / misplaced).write_text("x")  # wrong directory for its name
    (store.temp_dir / ("put-" + "a" * 64)).write_text("x")
    assert list(store.iter_hashes()) == [h]


def test_local_sweep_temp(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.check()
    stale = store.temp_dir / "put-stale.part"
    fresh = store.temp_dir / "put-fresh.part"
    stale.write_bytes(b"crashed upload")
    fresh.write_bytes(b"upload in progress")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert store.sweep_temp(older_than_seconds=3600) == 1
    assert not stale.exists() and fresh.exists()
    assert LocalStore(tmp_path / "nowhere").sweep_temp() == 0


def test_local_no_partial_blob_when_the_writer_dies(tmp_path: Path) -> None:
    """An upload interrupted mid-stream leaves no blob under any hash name (and no temp file)."""
    store = LocalStore(tmp_path)

    class Interrupted(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            self.calls += 1
            if self.calls > 2:
                raise KeyboardInterrupt
            buffer[: len(buffer)] = b"z" * len(buffer)
            return len(buffer)

    with pytest.raises(KeyboardInterrupt):
        store.put_stream(Interrupted())
    assert list(store.iter_hashes()) == []
    assert list(store.temp_dir.iterdir()) == []


def test_local_blob_files_are_complete_when_visible(tmp_path: Path) -> None:
    """While a big upload is being written, nothing appears under the blob directories."""
    store = LocalStore(tmp_path)
    seen: list[list[str]] = []

    class Watching(GeneratedStream):
        def readinto(self, buffer: Any) -> int:
            seen.append(list(store.iter_hashes()))
            return super().readinto(buffer)

    ref = store.put_stream(Watching(5 * MiB))
    assert all(snapshot == [] for snapshot in seen)
    assert list(store.iter_hashes()) == [ref.sha256]


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.binary(max_size=5000))
def test_local_round_trip_property(tmp_path: Path, data: bytes) -> None:
    store = LocalStore(tmp_path / "prop")
    ref = store.put_bytes(data)
    assert ref == BlobRef(sha(data), len(data))
    assert store.read_bytes(ref.sha256) == data


# --------------------------------------------------------------------------- S3Store specifics


def record_requests(store: S3Store) -> list[tuple[str, dict[str, str]]]:
    """Capture (operation, headers) of every request the store's client sends."""
    sent: list[tuple[str, dict[str, str]]] = []

    def before_send(request: Any, event_name: str, **_: Any) -> None:
        headers = {
            key.lower(): value.decode() if isinstance(value, bytes) else str(value)
            for key, value in request.headers.items()
        }
        sent.append((event_name.rsplit(".", 1)[-1], headers))

    store.client.meta.events.register("before-send.s3", before_send)
    return sent


def test_s3_single_put_sends_our_sha256(s3_endpoint: str, raw_s3: Any, bucket: str, tmp_path: Path) -> None:
    """The PUT carries the SHA-256 computed from the caller's stream, so S3 verifies it end to end."""
    store = make_s3_store(s3_endpoint, bucket, tmp_path / "spool")
    sent = record_requests(store)
    ref = store.put_bytes(b"checked")
    puts = [headers for operation, headers in sent if operation == "PutObject"]
    assert len(puts) == 1
    assert puts[0]["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(ref.sha256)).decode()
    assert puts[0]["x-amz-meta-sha256"] == ref.sha256
    head = raw_s3.head_object(Bucket=bucket, Key=store.key_for(ref.sha256))
    assert head["Metadata"]["sha256"] == ref.sha256
    assert head["ContentLength"] == ref.size

    store.put_bytes(b"checked")  # already there: a HEAD, no second upload
    assert [operation for operation, _ in sent].count("PutObject") == 1


def test_s3_multipart_upload(s3_endpoint: str, raw_s3: Any, bucket: str, tmp_path: Path) -> None:
    store = make_s3_store(s3_endpoint, bucket, tmp_path / "spool")
    sent = record_requests(store)
    stream = GeneratedStream(12 * MiB, seed=3)
    ref = store.put_stream(stream)  # above the 8 MiB threshold: parts of 5, 5 and 2 MiB
    assert ref.sha256 == GeneratedStream(12 * MiB, seed=3).expected_sha256()
    parts = [headers for operation, headers in sent if operation == "UploadPart"]
    assert len(parts) == 3
    for headers in parts:  # each part's SHA-256 travels with it (header or aws-chunked trailer)
        assert "x-amz-checksum-sha256" in headers or headers.get("x-amz-trailer") == "x-amz-checksum-sha256"
    head = raw_s3.head_object(Bucket=bucket, Key=store.key_for(ref.sha256))
    assert head["Metadata"]["sha256"] == ref.sha256
    assert "-" in head["ETag"]  # a multipart ETag
    assert store.size(ref.sha256) == 12 * MiB
    assert sum(len(c) for c in store.open_chunks(ref.sha256)) == 12 * MiB
    assert raw_s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_iter_hashes_skips_foreign_objects(
    s3_endpoint: str, raw_s3: Any, bucket: str, tmp_path: Path
) -> None:
    store = make_s3_store(s3_endpoint, bucket, tmp_path / "spool")
    ref = store.put_bytes(b"mine")
    other = sha(b"other")
    raw_s3.put_object(Bucket=bucket, Key=f"elsewhere/{other[:2]}/{other}", Body=b"other")
    raw_s3.put_object(Bucket=bucket, Key=f"{PREFIX}/notes.txt", Body=b"x")
    raw_s3.put_object(Bucket=bucket, Key=f"{PREFIX}/zz/{other}", Body=b"other")  # wrong directory
    assert list(store.iter_hashes()) == [ref.sha256]


def test_s3_check_fails_for_a_missing_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    store = make_s3_store(s3_endpoint, "no-such-bucket-concord", tmp_path / "spool")
    with pytest.raises(StorageError, match="does not exist"):
        store.check()


def test_s3_check_fails_for_an_unreachable_endpoint(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = make_s3_store(endpoint, "bucket", tmp_path / "spool")
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach") as excinfo:
        store.check()
    assert endpoint in str(excinfo.value)
    assert time.monotonic() - started < 5
    with pytest.raises(StorageError):
        store.put_bytes(b"nowhere to go")
    assert list((tmp_path / "spool").iterdir()) == []


def test_s3_addressing_style() -> None:
    def style(store: S3Store) -> object:
        return store.client.meta.config.s3["addressing_style"]

    assert style(S3Store("b", endpoint_url="http://minio:9000")) == "path"
    assert style(S3Store("b", endpoint_url="http://minio:9000", addressing_style="virtual")) == "virtual"
    assert style(S3Store("b")) == "auto"
    assert style(S3Store("b", addressing_style="path")) == "path"
    assert S3Store("b", "/a/b/").key_for("0" * 64) == "a/b/00/" + "0" * 64
    assert S3Store("b").key_for("0" * 64) == "00/" + "0" * 64
    config = S3Store("b").client.meta.config
    assert config.request_checksum_calculation == "when_supported"
    assert config.response_checksum_validation == "when_supported"
    with pytest.raises(ValueError):
        S3Store("b", addressing_style="sideways")


# --------------------------------------------------------------------------- open_store


def test_open_store_plain_path(tmp_path: Path) -> None:
    store = open_store(load_settings(storage_url=str(tmp_path / "objs"), max_upload_bytes=100))
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "objs").resolve()
    assert store.default_max_bytes == 100
    with pytest.raises(BlobTooLarge):
        store.put_bytes(b"x" * 101)


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store(load_settings(storage_url=f"file://{tmp_path}/objs"))
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "objs").resolve()


def test_open_store_default_is_under_data_dir(tmp_path: Path) -> None:
    store = open_store(load_settings(storage_url="", data_dir=tmp_path))
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "objects").resolve()


def test_open_store_s3(s3_endpoint: str, bucket: str) -> None:
    settings_ = load_settings(
        storage_url=f"s3://{bucket}/some/prefix/",
        s3_endpoint_url=s3_endpoint,
        s3_region="us-east-1",
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=SECRET_KEY,
        max_upload_bytes=1000,
    )
    store = open_store(settings_)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == (bucket, "some/prefix", s3_endpoint)
    assert store.default_max_bytes == 1000
    store.check()
    ref = store.put_bytes(b"via settings")
    assert store.key_for(ref.sha256).startswith("some/prefix/")
    assert store.read_bytes(ref.sha256) == b"via settings"
    with pytest.raises(BlobTooLarge):
        store.put_bytes(b"x" * 1001)


def test_blob_ref_validates() -> None:
    with pytest.raises(ValueError):
        BlobRef("nope", 1)
    with pytest.raises(ValueError):
        BlobRef(sha(b""), -1)
    ref = BlobRef(sha(b""), 0)
    with pytest.raises(AttributeError):
        ref.size = 3  # type: ignore[misc]
