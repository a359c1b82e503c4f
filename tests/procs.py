"""Real ``concord`` processes for crash tests and benchmarks.

:func:`start_server` runs ``concord serve`` on a free port in a new session (so :meth:`Server.kill` can
SIGKILL its whole process group, exactly as an out-of-memory killer or a pulled plug would) and waits for
``GET /readyz``. :func:`run_cli` runs any other ``concord`` command with the same environment. The
environment is built by :func:`server_env` from the ``CONCORD_*`` settings and nothing else of the
caller's ``CONCORD_*`` variables, so a developer's shell cannot leak into a test.

Server output goes to a log file, never to a pipe: a pipe nobody reads fills up and blocks the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

CONCORD = [sys.executable, "-m", "concord_core.cli.main"]
READY_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A Redis server of the caller's own (it may be flushed or killed), on a free port, keeping nothing
    on disk; yields its URL. FileNotFoundError when redis-server is not on PATH."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not on PATH")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _pings(url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.02)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def server_env(
    data_dir: Path, database_url: str, storage_url: str | None = None, **settings: str
) -> dict[str, str]:
    """The environment for a ``concord`` process: this one's, minus any ``CONCORD_*``, plus the given ones.

    ``settings`` are more ``CONCORD_*`` values by field name (``log_level="WARNING"``).
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONCORD_")}
    temp = data_dir / "tmp"
    temp.mkdir(parents=True, exist_ok=True)
    env.update(
        CONCORD_DATA_DIR=str(data_dir),
        CONCORD_DATABASE_URL=database_url,
        CONCORD_STORAGE_URL=storage_url or str(data_dir / "objects"),
        TMPDIR=str(temp),  # where request bodies spool, so a test's leftovers stay in its own directory
        PYTHONUNBUFFERED="1",
    )
    env.update({f"CONCORD_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass
class Server:
    """A running ``concord serve``; :meth:`kill` or :meth:`stop` it (both wait for it to be gone)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the process group: no shutdown handler, no flush, no rollback runs."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL if it has not exited in ``timeout``."""
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)  # start_new_session: the group id is the pid

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.alive():
            self.kill()


def start_server(
    env: dict[str, str],
    log_path: Path,
    *,
    port: int | None = None,
    timeout: float = READY_TIMEOUT,
    args: Sequence[str] = (),
) -> Server:
    """Start ``concord serve`` with ``env`` and return once ``/readyz`` answers 200.

    Raises RuntimeError (with the server's log) if it exits or is not ready within ``timeout`` seconds.
    A port taken between :func:`free_port` and the bind is retried once with another port. ``args`` are
    more ``concord serve`` options (``["--workers", "2"]``).
    """
    attempts = 1 if port is not None else 2
    for attempt in range(attempts):
        chosen = port or free_port()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [*CONCORD, "serve", "--host", "127.0.0.1", "--port", str(chosen), *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(process, chosen, log_path, env)
        try:
            wait_ready(server, timeout)
            return server
        except RuntimeError:
            server.kill()
            if attempt + 1 == attempts or "address already in use" not in server.log():
                raise
    raise AssertionError("unreachable")


def wait_ready(server: Server, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"concord serve exited with {server.process.returncode} before it was ready:\n{server.log()}"
            )
        try:
            response = httpx.get(f"{server.url}/readyz", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise RuntimeError(f"concord serve not ready after {timeout}s ({last}):\n{server.log()}")


def run_cli(env: dict[str, str], *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``concord <args>`` with ``env`` to completion, capturing its output."""
    return subprocess.run(
        [*CONCORD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
