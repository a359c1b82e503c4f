"""A benchmark-only lens: a no-op job, and a slow checkpointed one for measuring recovery after SIGKILL.

Never installed: benchmarks/jobs.py puts this folder on the ``PYTHONPATH`` of the processes it starts,
where the dist-info beside it makes it an entry-point lens.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from concord_core.plugins import JobContext, JobHandler, hookimpl

MANIFEST: dict[str, Any] = {
    "manifestVersion": 1,
    "lensId": "bench",
    "name": "Benchmark jobs",
    "version": "0.1.0",
    "category": "utility",
    "concordVersion": ">=0.1,<1",
    "capabilities": {"jobs": True},
    "views": [],
    "actions": [],
    "dataTypes": [],
    "permissions": ["jobs:run"],
    "exportFormats": [],
    "jobTypes": [{"type": "bench.noop"}, {"type": "bench.steps", "maxAttempts": 5}],
}


def noop(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {}


def steps(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """``count`` steps of ``delay`` seconds, each checkpointed."""
    done = int((ctx.checkpoint_state or {}).get("done", 0))
    for step in range(done, int(payload["count"])):
        time.sleep(float(payload["delay"]))
        ctx.checkpoint({"done": step + 1})
    return {"done": int(payload["count"])}


@hookimpl
def concord_lens_manifest() -> dict[str, Any]:
    return MANIFEST


@hookimpl
def concord_job_handlers() -> Mapping[str, JobHandler]:
    return {"bench.noop": noop, "bench.steps": steps}
