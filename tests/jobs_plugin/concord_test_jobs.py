"""A test-only lens whose job handlers exercise the jobs runtime: no-ops, checkpointed counting with
artifacts, crashes, flaky and permanent failures, slow cancellable work and timeouts.

It is never installed. Tests put this folder on ``PYTHONPATH`` of the processes they start (its dist-info
makes it an entry-point lens there, exactly like an installed plugin), and load it by path in-process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from concord_core.plugins import JobContext, JobHandler, PermanentJobError, hookimpl

MANIFEST: dict[str, Any] = {
    "manifestVersion": 1,
    "lensId": "testjobs",
    "name": "Test jobs",
    "version": "0.1.0",
    "category": "utility",
    "concordVersion": ">=0.1,<1",
    "capabilities": {"jobs": True},
    "views": [],
    "actions": [],
    "dataTypes": [],
    "permissions": ["jobs:run"],
    "exportFormats": [],
    "jobTypes": [
        {"type": "testjobs.noop", "maxAttempts": 3},
        {"type": "testjobs.count", "maxAttempts": 5, "timeoutSeconds": 120},
        {"type": "testjobs.crash", "maxAttempts": 3, "queue": "poison"},
        {"type": "testjobs.flaky", "maxAttempts": 4},
        {"type": "testjobs.permanent", "maxAttempts": 5},
        {"type": "testjobs.sleep", "maxAttempts": 1},
        {"type": "testjobs.timeout", "maxAttempts": 2, "timeoutSeconds": 1},
    ],
}


def noop(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "echo": payload}


def count(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Sum 1..to, one number per ``delay`` seconds, checkpointing each; writes an artifact halfway and one
    with the result. A re-run resumes from the checkpoint and returns what an uninterrupted run does."""
    to, delay = int(payload["to"]), float(payload.get("delay", 0.0))
    state = ctx.checkpoint_state or {"i": 0, "total": 0}
    half: tuple[str, int] | None = None
    i, total = int(state["i"]), int(state["total"])
    while i < to:
        time.sleep(delay)
        i += 1
        total += i
        if i == to // 2:
            half = ctx.write_artifact(
                step="half",
                role="partial",
                name="half",
                content=f"{total}\n".encode(),
                media_type="text/plain",
            )
        ctx.checkpoint({"i": i, "total": total})
        ctx.progress(i / to, f"{i} of {to}")
    if half is None:  # a resumed run past the halfway point: the first run's artifact stands
        half = ctx.write_artifact(
            step="half", role="partial", name="half", content=b"(resumed)\n", media_type="text/plain"
        )
    result = ctx.write_artifact(
        step="result",
        role="sum",
        name="sum",
        content=json.dumps({"to": to, "total": total}).encode(),
        media_type="application/json",
    )
    return {"total": total, "half": list(half), "result": list(result)}


def crash(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Kill the process running it (a poison job), unless this attempt is past ``until``."""
    if ctx.attempt <= int(payload.get("until", 1_000_000)):
        os._exit(3)
    return {"survived": ctx.attempt}


def flaky(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    if ctx.attempt < int(payload["succeed_on"]):
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


def permanent(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    raise PermanentJobError("this input can never work")


def sleep(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    seconds = float(payload.get("seconds", 5))
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        ctx.progress(elapsed / seconds, "sleeping")
        time.sleep(0.02)
    return {"slept": seconds}


def timeout(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    while True:
        ctx.progress(0.5, "never done")
        time.sleep(0.05)


HANDLERS: dict[str, JobHandler] = {
    "testjobs.noop": noop,
    "testjobs.count": count,
    "testjobs.crash": crash,
    "testjobs.flaky": flaky,
    "testjobs.permanent": permanent,
    "testjobs.sleep": sleep,
    "testjobs.timeout": timeout,
}


@hookimpl
def concord_lens_manifest() -> dict[str, Any]:
    return MANIFEST


@hookimpl
def concord_job_handlers() -> Mapping[str, JobHandler]:
    return HANDLERS
