"""Job types: which handler runs a type, on which queue, with what timeout and how many attempts.

Lenses declare their job types in their manifest (``jobTypes``: ``type``, ``queue``, ``timeoutSeconds``,
``maxAttempts``) and hand over the handlers through ``concord_job_handlers()``. The kernel adds its own
types (the steps of its built-in workflows), whose names start with ``concord.``; a lens can never take
one over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from concord_core.plugins.contract import JobHandler
from concord_core.plugins.registry import LensRegistry

DEFAULT_QUEUE = "default"
DEFAULT_TIMEOUT_SECONDS = 600
DEFAULT_MAX_ATTEMPTS = 3
KERNEL_PREFIX = "concord."


@dataclass(frozen=True)
class JobSpec:
    """One job type as the runtime runs it."""

    job_type: str
    handler: JobHandler
    queue: str = DEFAULT_QUEUE
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    owner: str = "kernel"  # the lens id that declared it, or "kernel"


def _kernel_specs() -> list[JobSpec]:
    # Imported here: the workflow steps use operators, which the rest of this package must not pull in.
    from concord_core.jobs.dtu_import import JOB_SPECS

    return list(JOB_SPECS)


@dataclass(frozen=True)
class JobCatalog:
    """Every job type this process can run, by name."""

    specs: Mapping[str, JobSpec]

    @classmethod
    def build(cls, lenses: LensRegistry | None, extra: Iterable[JobSpec] = ()) -> JobCatalog:
        specs: dict[str, JobSpec] = {}
        for lens in lenses.active if lenses is not None else []:
            declared = {entry["type"]: entry for entry in (lens.manifest or {}).get("jobTypes", [])}
            for job_type, handler in lens.job_handlers.items():
                entry = declared.get(job_type, {})
                specs[job_type] = JobSpec(
                    job_type=job_type,
                    handler=handler,
                    queue=entry.get("queue", DEFAULT_QUEUE),
                    timeout_seconds=int(entry.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)),
                    max_attempts=int(entry.get("maxAttempts", DEFAULT_MAX_ATTEMPTS)),
                    owner=lens.lens_id,
                )
        for spec in [*_kernel_specs(), *extra]:
            specs[spec.job_type] = spec  # the kernel's (and a test's) types win
        return cls(specs)

    def get(self, job_type: str) -> JobSpec | None:
        return self.specs.get(job_type)

    def queues(self) -> list[str]:
        """Every queue some job type runs on, ``default`` first."""
        names = {spec.queue for spec in self.specs.values()} | {DEFAULT_QUEUE}
        return sorted(names, key=lambda name: (name != DEFAULT_QUEUE, name))
