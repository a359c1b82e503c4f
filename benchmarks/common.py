"""Shared pieces of the benchmarks: throwaway databases, an HTTP client, timing and printing figures.

Benchmarks print; they never assert. Each one creates what it measures against and removes it afterwards.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import statistics
import sys
import timeit
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES_URL = os.environ.get(
    "CONCORD_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on ``admin_url``'s server, dropped afterwards; yields its URL."""
    name = f"concord_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class JsonClient:
    """One keep-alive HTTP/1.1 connection that sends JSON and returns the status and the raw body.

    The benchmarks' clients run on the machine they measure and take its CPU from the server. This one, on
    the standard library's ``http.client``, spends about a third of what an ``httpx.Client`` does per
    request (0.7 against 1.9 ms for a ``createDtu``, measured here), and less of each latency is the
    client's. Errors are the connection's own (``OSError``, ``http.client.HTTPException``)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> None:
        address = urlsplit(base_url)
        if address.scheme != "http" or address.hostname is None:
            raise ValueError(f"not an http:// address: {base_url}")
        self._connection = http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)
        self._headers = {"Content-Type": "application/json", **(headers or {})}

    def get(self, path: str) -> tuple[int, bytes]:
        return self._send("GET", path, None)

    def post(self, path: str, document: Any) -> tuple[int, bytes]:
        """POST ``document`` as JSON (encoded here, so within whatever the caller times)."""
        return self._send("POST", path, json.dumps(document).encode())

    def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        self._connection.request(method, path, body=body, headers=self._headers)
        response = self._connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> JsonClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def percentile(samples: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (0.5 = median) of ``samples``, interpolated."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=1000, method="inclusive")[round(fraction * 1000) - 1]


def machine() -> str:
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )


def load() -> str:
    """The 1-minute load average: other work on the machine skews every figure printed here."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time used so far by process ``pid`` (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """:func:`cpu_seconds` of ``pid`` and of every process below it (uvicorn's worker processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    total, stack = None, [pid]
    while stack:
        current = stack.pop()
        seconds = cpu_seconds(current)
        if seconds is not None:
            total = (total or 0.0) + seconds
        stack += children.get(current, [])
    return total


def speed() -> str:
    """The time of a fixed piece of pure Python (best of 5): this machine's speed drifts by up to 2x within
    minutes, so a run's figures are read next to it."""
    best = min(timeit.repeat("sum(range(10000))", number=200, repeat=5)) / 200
    return f"sum(range(10000)) in {best * 1e6:.0f} µs"


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# {machine()}, load average {load()}; speed: {speed()}")
    sys.stdout.flush()
