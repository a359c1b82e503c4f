"""Durable jobs end to end: throughput against plain RQ, enqueue-to-start latency, recovery after SIGKILL.

Everything runs against a fresh PostgreSQL database and a Redis server of the benchmark's own (started on a
free port, so the shared one is never touched):

1. **Concord**: ``concord worker --processes 2``; N no-op jobs enqueued by 4 client threads through the
   ``enqueueJobs`` operator in batches of ``--batch`` (default 50: each job its row, event and audit row,
   one transaction and one RQ round trip per batch), or with ``--batch 1`` one ``enqueueJob`` per job;
   timed from the first enqueue to the last job recorded succeeded. Latency is ``job_runs.started_at -
   jobs.created_at`` over 100 more jobs enqueued one at a time, 50 ms apart (dispatch latency, not the
   throughput run's backlog).
2. **Plain RQ** on the same Redis: 2 ``rq worker`` processes, N no-op functions enqueued by 4 threads,
   batched the same way (``Queue.enqueue_many``, or ``Queue.enqueue`` with ``--batch 1``); timed until
   RQ's finished registry holds them all. Both RQ's SimpleWorker (what Concord's workers are) and its
   default forking Worker (over at most 100 jobs).
   Both also print the CPU time per job of their worker processes, of the enqueueing process, of the
   benchmark database's PostgreSQL backends and of the Redis server: on a machine shared with other work
   CPU per job is steadier than the rates, and 2 cores at 150 jobs/s leave 13 ms of CPU per job for all
   of them together.
3. **Recovery**: a checkpointed job runs on worker A; worker B is idle; A's process group is SIGKILLed;
   timed from the kill until the job runs again on B, and until it succeeds.

    .venv/bin/python benchmarks/jobs.py                 # 2000 jobs
    .venv/bin/python benchmarks/jobs.py -n 5000
    .venv/bin/python benchmarks/jobs.py --batch 1       # one enqueueJob (one Queue.enqueue) per job

Targets (issue 5): at least 150 jobs per second, at least half of plain RQ's rate, recovery within 30 s.
The last line says which were met; the run exits 0 either way (benchmarks print, they never assert).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from rq import Queue
from rq.registry import FinishedJobRegistry
from sqlalchemy import func, select

from benchmarks.common import DEFAULT_POSTGRES_URL, ROOT, cpu_seconds, header, percentile, postgres_database
from concord_core.api.gql.schema import KERNEL
from concord_core.api.runtime import Runtime
from concord_core.db.migrate import upgrade
from concord_core.db.models import Job, JobRun
from concord_core.jobs.enqueue import MAX_BATCH, enqueue_job, enqueue_jobs
from concord_core.plugins.registry import discover, load_registry
from concord_core.settings import Settings, load_settings

sys.path.insert(0, str(ROOT / "tests"))
from procs import redis_server

LENS_DIR = Path(__file__).resolve().parent / "jobs_lens"
CLIENTS = 4
LATENCY_SAMPLES = 100
LATENCY_GAP = 0.05
TARGET_RATE = 150.0
TARGET_RECOVERY = 30.0
CPU_LABEL = "  CPU per job:                       "


#: What plain RQ runs (benchmarks/jobs_lens is on its workers' PYTHONPATH).
PLAIN_NOOP = "plain_rq_noop.noop"


def wait(check: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        time.sleep(interval)


def env_for(settings: Settings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONCORD_")}
    env.update(
        CONCORD_DATABASE_URL=settings.resolved_database_url,
        CONCORD_DATA_DIR=str(settings.data_dir),
        CONCORD_STORAGE_URL=str(settings.storage_url),
        CONCORD_REDIS_URL=str(settings.redis_url),
        CONCORD_REDIS_NAMESPACE=settings.redis_namespace,
        CONCORD_LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(LENS_DIR), str(ROOT)]),
    )
    return env


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def group_cpu(groups: list[int]) -> float:
    """CPU seconds used so far by the live processes of the process groups ``groups`` (Linux ``/proc``):
    on a shared machine, CPU per job is steadier than jobs per second."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups:
            total += cpu_seconds(int(entry.name)) or 0.0
    return total


def own_cpu() -> float:
    return time.process_time()


def server_cpu(database: str, redis_port: int) -> tuple[float, float]:
    """CPU seconds used so far by the PostgreSQL backends serving ``database`` (their process titles name
    it) and by the Redis server on ``redis_port`` (Linux ``/proc``). A backend that exited took its CPU
    with it; the workers' and the benchmark's pooled connections live through a run."""
    postgres = redis_server_cpu = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if command.startswith("postgres:") and f" {database} " in command:
            postgres += cpu_seconds(int(entry.name)) or 0.0
        elif "redis-server" in command and any(word.endswith(f":{redis_port}") for word in command.split()):
            redis_server_cpu += cpu_seconds(int(entry.name)) or 0.0
    return postgres, redis_server_cpu


class CpuMeter:
    """CPU per job of everything a run uses: worker processes, this process while it enqueues (not while
    it then polls for the end of the run), PostgreSQL's backends for the benchmark database, the Redis
    server."""

    def __init__(self, groups: list[int], database: str, redis_port: int) -> None:
        self._groups, self._database, self._redis_port = groups, database, redis_port
        self._start = self._now()
        self._enqueued: float | None = None

    def enqueued(self) -> None:
        """The enqueueing is over: this process's CPU from here on is the benchmark's own polling."""
        self._enqueued = own_cpu()

    def _now(self) -> tuple[float, float, float, float]:
        return (group_cpu(self._groups), own_cpu(), *server_cpu(self._database, self._redis_port))

    def per_job(self, count: int) -> tuple[float, float, float, float]:
        """(workers, enqueueing, PostgreSQL, Redis) milliseconds per job since the meter was made."""
        now = self._now()
        if self._enqueued is not None:
            now = (now[0], self._enqueued, now[2], now[3])
        workers, client, postgres, redis_cpu = (
            (after - before) * 1000 / count for after, before in zip(now, self._start, strict=True)
        )
        return workers, client, postgres, redis_cpu


def cpu_line(cpu: tuple[float, float, float, float]) -> str:
    workers, client, postgres, redis_cpu = cpu
    return (
        f"{CPU_LABEL}{workers:6.1f} ms workers, {client:.1f} ms enqueueing, {postgres:.1f} ms PostgreSQL, "
        f"{redis_cpu:.1f} ms Redis; {sum(cpu):.1f} ms in all"
    )


def kill_group(process: subprocess.Popen[bytes], signum: int = signal.SIGKILL) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    process.wait(timeout=60)


def concord_worker(env: dict[str, str], log: Path, processes: int) -> subprocess.Popen[bytes]:
    return start(
        [sys.executable, "-m", "concord_core.cli.main", "worker", "--processes", str(processes)], env, log
    )


def in_clients(count: int, client: Callable[[int], None]) -> None:
    """Run ``client(share)`` on CLIENTS threads at once, the shares adding up to ``count``."""
    threads = [
        threading.Thread(target=client, args=(count // CLIENTS + (i < count % CLIENTS),))
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def enqueue_many(runtime: Runtime, job_type: str, count: int, batch: int = 1) -> list[str]:
    """``count`` jobs from CLIENTS threads: ``enqueueJob`` per job, or ``enqueueJobs`` per ``batch``."""
    assert runtime.local_owner_id is not None
    ops = runtime.operation_context(runtime.principal_for_user(runtime.local_owner_id))
    ids: list[str] = []
    lock = threading.Lock()

    def client(share: int) -> None:
        while share > 0:
            size = min(batch, share)
            share -= size
            if batch == 1:
                made = [enqueue_job(ops, runtime.jobs.catalog, {"job_type": job_type, "input": {}})[0]]
            else:
                jobs = [{"job_type": job_type, "input": {}}] * size
                made = [job for job, _ in enqueue_jobs(ops, runtime.jobs.catalog, {"jobs": jobs})]
            with lock:
                ids.extend(job.id for job in made)

    in_clients(count, client)
    return ids


def succeeded(runtime: Runtime, ids: list[str]) -> int:
    with runtime.db.read() as session:
        total = 0
        for start_at in range(0, len(ids), 1000):
            chunk = ids[start_at : start_at + 1000]
            total += (
                session.scalar(select(func.count()).where(Job.id.in_(chunk), Job.status == "succeeded")) or 0
            )
        return total


def succeeded_total(runtime: Runtime) -> int:
    """Every succeeded job in the benchmark's database (only the benchmark makes jobs there): as cheap a
    check as plain RQ's registry count, where ``succeeded`` over 2000 ids would compile two 1000-parameter
    statements every 50 ms in the process that is enqueueing (and whose CPU is measured)."""
    with runtime.db.read() as session:
        return session.scalar(select(func.count()).where(Job.status == "succeeded")) or 0


def bench_concord(
    runtime: Runtime, env: dict[str, str], log: Path, count: int, batch: int, servers: tuple[str, int]
) -> tuple[float, list[float], tuple[float, float, float, float]]:
    """Throughput over ``count`` jobs enqueued at once; then latency over jobs enqueued one at a time, well
    below capacity (so it measures dispatch, not the backlog of the throughput run). Also the CPU per job
    of the worker processes, this (enqueueing) process, PostgreSQL and Redis over the throughput run."""
    worker = concord_worker(env, log, 2)
    try:
        warm = enqueue_many(runtime, "bench.noop", 40, batch)
        wait(lambda: succeeded(runtime, warm) == len(warm), 120, "warm-up jobs")
        before = succeeded_total(runtime)
        started, meter = time.perf_counter(), CpuMeter([worker.pid], *servers)
        enqueue_many(runtime, "bench.noop", count, batch)
        meter.enqueued()
        wait(lambda: succeeded_total(runtime) >= before + count, 1200, "Concord jobs", interval=0.05)
        elapsed = time.perf_counter() - started
        cpu = meter.per_job(count)
        paced = []
        for _ in range(LATENCY_SAMPLES):
            paced += enqueue_many(runtime, "bench.noop", 1)
            time.sleep(LATENCY_GAP)
        wait(lambda: succeeded(runtime, paced) == len(paced), 60, "latency jobs")
    finally:
        kill_group(worker, signal.SIGTERM)
    with runtime.db.read() as session:
        rows = session.execute(
            select(Job.created_at, func.min(JobRun.started_at))
            .join(JobRun, JobRun.job_id == Job.id)
            .where(Job.id.in_(paced))
            .group_by(Job.id, Job.created_at)
        ).all()
    latencies = [(started_at - created).total_seconds() * 1000 for created, started_at in rows]
    return count / elapsed, latencies, cpu


def bench_plain_rq(
    redis_url: str,
    env: dict[str, str],
    log: Path,
    count: int,
    worker_class: str,
    batch: int,
    servers: tuple[str, int],
) -> tuple[float, tuple[float, float, float, float]]:
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(f"plain-{worker_class.rsplit('.', 1)[-1].lower()}", connection=connection)
    rq = str(Path(sys.executable).with_name("rq"))
    command = [rq, "worker", "--url", redis_url, "-w", worker_class, "--logging_level", "WARNING", queue.name]
    workers = [start(command, env, log) for _ in range(2)]
    registry = FinishedJobRegistry(queue=queue)
    try:
        for _ in range(20):
            queue.enqueue(PLAIN_NOOP)
        wait(lambda: registry.count >= 20, 180, "plain RQ warm-up")
        started, meter = time.perf_counter(), CpuMeter([worker.pid for worker in workers], *servers)

        def client(share: int) -> None:
            own = Queue(queue.name, connection=redis.Redis.from_url(redis_url))
            while share > 0:
                size = min(batch, share)
                share -= size
                if batch == 1:
                    own.enqueue(PLAIN_NOOP)
                else:
                    own.enqueue_many([Queue.prepare_data(PLAIN_NOOP) for _ in range(size)])

        in_clients(count, client)
        meter.enqueued()
        wait(lambda: registry.count >= count + 20, 600, "plain RQ jobs", interval=0.05)
        rate = count / (time.perf_counter() - started)
        return rate, meter.per_job(count)
    finally:
        for worker in workers:
            kill_group(worker, signal.SIGTERM)


def bench_recovery(runtime: Runtime, env: dict[str, str], directory: Path) -> tuple[float, float]:
    worker_a = concord_worker(env, directory / "worker-a.log", 1)
    worker_b: subprocess.Popen[bytes] | None = None
    try:
        (job_id,) = [
            enqueue_job(
                runtime.operation_context(runtime.principal_for_user(str(runtime.local_owner_id))),
                runtime.jobs.catalog,
                {"job_type": "bench.steps", "input": {"count": 100, "delay": 0.05}},
            )[0].id
        ]

        def progress() -> int:
            with runtime.db.read() as session:
                job = session.get(Job, job_id)
                return int(((job.checkpoint if job else None) or {}).get("done", 0))

        wait(lambda: progress() >= 1, 60, "the job to start on worker A")
        worker_b = concord_worker(env, directory / "worker-b.log", 1)
        time.sleep(5)  # B is up and idle
        wait(lambda: progress() >= 40, 60, "the job to get going")
        kill_group(worker_a)
        killed = time.perf_counter()

        def restarted() -> bool:
            with runtime.db.read() as session:
                return bool(
                    session.scalar(select(func.count()).where(JobRun.job_id == job_id, JobRun.attempt == 2))
                )

        wait(restarted, 120, "the job to run again")
        to_restart = time.perf_counter() - killed
        wait(lambda: succeeded(runtime, [job_id]) == 1, 120, "the job to succeed")
        return to_restart, time.perf_counter() - killed
    finally:
        kill_group(worker_a)
        if worker_b is not None:
            kill_group(worker_b, signal.SIGTERM)


def bench_lens() -> object:
    sys.path.insert(0, str(LENS_DIR))
    import concord_bench_jobs

    return concord_bench_jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="jobs per throughput run (default 2000)")
    parser.add_argument(
        "--batch",
        type=int,
        default=50,
        choices=range(1, MAX_BATCH + 1),
        metavar=f"1..{MAX_BATCH}",
        help="jobs per enqueue call (default 50; 1: enqueueJob and Queue.enqueue per job)",
    )
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES_URL, help="admin URL of the PostgreSQL server")
    args = parser.parse_args()
    header("Durable jobs: Concord on RQ vs plain RQ (2 worker processes each), latency, recovery")
    with tempfile.TemporaryDirectory() as temp, postgres_database(args.postgres) as database_url:
        directory = Path(temp)
        with redis_server(directory) as redis_url:
            settings = load_settings(
                data_dir=directory,
                database_url=database_url,
                storage_url=str(directory / "objects"),
                redis_url=redis_url,
                redis_namespace="bench",
                log_level="WARNING",
            )
            lenses = load_registry(
                KERNEL,
                skip_invalid=False,
                plugins=[*discover(), ("bench = concord_bench_jobs", bench_lens())],
            )
            runtime = Runtime.open(settings, lenses)
            upgrade(runtime.db)
            runtime.start()
            env = env_for(settings)
            servers = (database_url.rsplit("/", 1)[1], int(redis_url.rsplit(":", 1)[1].split("/")[0]))
            enqueued_by = f"enqueueJobs x{args.batch}" if args.batch > 1 else "enqueueJob"
            try:
                rate, latencies, cpu = bench_concord(
                    runtime, env, directory / "concord.log", args.n, args.batch, servers
                )
                print(
                    f"concord (RQ, 2 workers, PostgreSQL): {rate:8.1f} jobs/s over {args.n} no-op jobs "
                    f"({enqueued_by})"
                )
                print(cpu_line(cpu))
                print(
                    f"enqueue-to-start latency:            p50 {percentile(latencies, 0.5):6.1f} ms, "
                    f"p95 {percentile(latencies, 0.95):6.1f} ms"
                )
                simple, rq_cpu = bench_plain_rq(
                    redis_url,
                    env,
                    directory / "rq-simple.log",
                    args.n,
                    "rq.worker.SimpleWorker",
                    args.batch,
                    servers,
                )
                plain_by = f"enqueue_many x{args.batch}" if args.batch > 1 else "enqueue"
                print(f"plain RQ, SimpleWorker:              {simple:8.1f} jobs/s ({plain_by})")
                print(cpu_line(rq_cpu))
                fork_count = min(args.n, 100)  # a fork per job is slow: fewer jobs keep the run short
                try:
                    forking: float | None = bench_plain_rq(
                        redis_url,
                        env,
                        directory / "rq-fork.log",
                        fork_count,
                        "rq.worker.Worker",
                        args.batch,
                        servers,
                    )[0]
                except SystemExit as exc:  # a busy machine: report it, keep the other figures
                    print(f"plain RQ, Worker (fork per job):     not measured ({exc})")
                    forking = None
                else:
                    print(f"plain RQ, Worker (fork per job):     {forking:8.1f} jobs/s")
                print(
                    f"concord / plain RQ:                  {rate / simple:8.2f} of SimpleWorker"
                    + (f", {rate / forking:.2f} of Worker" if forking else "")
                )
                to_restart, to_done = bench_recovery(runtime, env, directory)
                print(
                    f"recovery after SIGKILL:              running again after {to_restart:.1f} s, "
                    f"succeeded {to_done:.1f} s after the kill"
                )
                bound = settings.job_lease_seconds + settings.job_poll_seconds
                print(f"lease expiry bound (another host):   {bound:.1f} s")
            finally:
                runtime.close()
    print(
        f"targets: >= {TARGET_RATE:.0f} jobs/s: {'met' if rate >= TARGET_RATE else 'MISSED'}; "
        f">= half of plain RQ (SimpleWorker): {'met' if rate >= simple / 2 else 'MISSED'}; "
        f"recovery <= {TARGET_RECOVERY:.0f} s: {'met' if to_restart <= TARGET_RECOVERY else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
