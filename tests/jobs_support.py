"""Helpers for the jobs and workflows tests: the test-only lens, runtimes with it, waiting, worker processes.

The lens (``tests/jobs_plugin/concord_test_jobs.py``) is loaded by path in this process, so the lenses
other tests see are untouched; the processes a test starts get its folder on ``PYTHONPATH``, where its
dist-info makes it an installed lens (``concord.lenses`` entry point).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from procs import CONCORD, server_env

from concord_core.api.gql.schema import KERNEL
from concord_core.api.runtime import Runtime
from concord_core.auth.accounts import create_user, load_principal
from concord_core.auth.principal import Principal
from concord_core.db.migrate import upgrade
from concord_core.db.models import Job
from concord_core.operators.base import OperationContext
from concord_core.plugins.registry import LensRegistry, discover, load_registry
from concord_core.settings import Settings

PLUGIN_DIR = Path(__file__).resolve().parent / "jobs_plugin"
T = TypeVar("T")


def load_test_lens() -> ModuleType:
    """The test lens module, loaded by path (once)."""
    name = "concord_test_jobs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PLUGIN_DIR / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def lenses_with_test_jobs() -> LensRegistry:
    return load_registry(
        KERNEL, skip_invalid=False, plugins=[*discover(), ("testjobs = concord_test_jobs", load_test_lens())]
    )


@contextmanager
def open_runtime(settings: Settings, *, start_jobs: bool = True) -> Iterator[Runtime]:
    """A migrated runtime with the test lens; its in-process runners started unless told otherwise."""
    runtime = Runtime.open(settings, lenses_with_test_jobs())
    upgrade(runtime.db)
    runtime.start()
    if start_jobs:
        runtime.jobs.start()
    try:
        yield runtime
    finally:
        runtime.close()


def owner_ops(runtime: Runtime) -> OperationContext:
    assert runtime.local_owner_id is not None
    return runtime.operation_context(runtime.principal_for_user(runtime.local_owner_id))


def new_user(runtime: Runtime, name: str) -> Principal:
    """A non-admin user with a personal workspace, as a principal."""
    with runtime.db.write() as session:
        user = create_user(session, email=f"{name}@example.com", display_name=name)
        user_id = user.id
    with runtime.db.read() as session:
        principal = load_principal(session, user_id)
    assert principal is not None
    return principal


def wait_for(check: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(interval)


def job_row(runtime: Runtime, job_id: str) -> Job:
    with runtime.db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def wait_status(runtime: Runtime, job_id: str, *statuses: str, timeout: float = 20.0) -> Job:
    wanted = statuses or ("succeeded",)

    def reached() -> Job | None:
        job = job_row(runtime, job_id)
        return job if job.status in wanted else None

    return wait_for(reached, timeout)


def process_env(data_dir: Path, database_url: str, **settings: str) -> dict[str, str]:
    """The environment for ``concord`` processes of a test, with the test lens installed."""
    env = server_env(data_dir, database_url, **settings)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@dataclass
class Worker:
    """A ``concord worker`` process group (its supervisor and RQ worker processes)."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group: nothing gets to clean up."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 40.0) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill()


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> Worker:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [*CONCORD, "worker", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Worker(process, log_path)


def graphql(url: str, query: str, variables: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    import httpx

    response = httpx.post(url, json={"query": query, "variables": variables or {}}, timeout=timeout)
    response.raise_for_status()
    body = response.json()
    assert not body.get("errors"), body["errors"]
    return body["data"]
