"""Durable jobs through RQ, with real processes and real signals (issue 5's proof).

* ``concord worker`` processes run jobs on SQLite and on PostgreSQL, and a worker's progress wakes a
  subscriber in another process;
* SIGKILL of a worker's process group in the middle of a checkpointed job: another worker finishes it from
  the checkpoint within 30 seconds, with the result of an uninterrupted run and no duplicated artifact;
* SIGKILL of the server right after a mutation commits its job and before it is enqueued: the job runs;
* ``FLUSHALL`` of Redis while jobs are queued and running: every job completes (on a Redis server of this
  test's own, never the shared one);
* a poison job that kills its worker fails after ``maxAttempts`` with its error on every run, without
  holding up other jobs;
* one idempotency key sent at once by many HTTP clients creates exactly one job;
* a message that ended in RQ without running its job (filed as failed) is replaced by the relay, and the
  relay wakes a worker for a queue whose wake-up was lost;
* a batch of jobs sends one wake-up per idle worker, not one message per job, and a woken worker drains
  the queue, waking a worker again when it stops at its bound.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import make_settings, service_missing
from jobs_support import (
    Worker,
    graphql,
    job_row,
    open_runtime,
    owner_ops,
    process_env,
    start_worker,
    wait_for,
    wait_status,
)
from procs import redis_server, start_server
from rq import Queue
from sqlalchemy import func, select

from concord_core.api.gql.ids import from_global_id
from concord_core.api.runtime import Runtime
from concord_core.db.models import ArtifactVersion, Event, Job, JobArtifact, JobRun
from concord_core.jobs.enqueue import enqueue_job, enqueue_jobs
from concord_core.jobs.service import CRASH_AFTER_COMMIT
from concord_core.settings import Settings

pytestmark = pytest.mark.slow

LEASE = "3"
POLL = "0.2"
ENQUEUE = """
mutation Enqueue($type: String!, $input: JSON, $key: String) {
  enqueueJob(type: $type, input: $input, idempotencyKey: $key) { job { id status } errors { code } }
}"""


def settings_for(tmp_path: Path, database_url: str, redis_url: str, namespace: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        redis_url=redis_url,
        redis_namespace=namespace,
        job_lease_seconds=float(LEASE),
        job_poll_seconds=float(POLL),
        job_retry_base_seconds=0.1,
    )


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    assert settings.redis_url is not None
    return process_env(
        settings.data_dir,
        settings.resolved_database_url,
        redis_url=settings.redis_url,
        redis_namespace=settings.redis_namespace,
        job_lease_seconds=LEASE,
        job_poll_seconds=POLL,
        job_retry_base_seconds="0.1",
        log_level=os.environ.get("TEST_LOG_LEVEL", "WARNING"),
        **extra,
    )


@pytest.fixture
def deployment(
    tmp_path: Path, database_url: str, redis_url: str, redis_namespace: str
) -> Iterator[tuple[Runtime, dict[str, str]]]:
    settings = settings_for(tmp_path, database_url, redis_url, redis_namespace)
    with open_runtime(settings) as runtime:
        yield runtime, env_for(settings)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.alive():
            worker.kill()


def enqueue(runtime: Runtime, job_type: str, payload: dict[str, Any] | None = None) -> str:
    job, _ = enqueue_job(
        owner_ops(runtime), runtime.jobs.catalog, {"job_type": job_type, "input": payload or {}}
    )
    return job.id


def holding(workers: list[Worker], lease_owner: str | None) -> Worker:
    """The worker whose process group holds a lease (its owner is ``host/pid/role``)."""
    pid = int(str(lease_owner).split("/")[1])
    (holder,) = [worker for worker in workers if os.getpgid(pid) == worker.process.pid]
    return holder


def artifact_hashes(runtime: Runtime, job_id: str) -> dict[tuple[str, str], str]:
    with runtime.db.read() as session:
        links = session.scalars(select(JobArtifact).where(JobArtifact.job_id == job_id)).all()
        return {
            (link.step_key, link.role): session.get(
                ArtifactVersion, (link.artifact_id, link.artifact_version)
            ).blob_sha256  # type: ignore[union-attr]
            for link in links
        }


def test_rq_workers_run_jobs_and_their_progress_reaches_other_processes(
    deployment: tuple[Runtime, dict[str, str]], workers: list[Worker], tmp_path: Path
) -> None:
    runtime, env = deployment
    ids = {
        "noop": enqueue(runtime, "testjobs.noop", {"n": 1}),
        "count": enqueue(runtime, "testjobs.count", {"to": 10, "delay": 0.05}),
        "flaky": enqueue(runtime, "testjobs.flaky", {"succeed_on": 2}),
        "permanent": enqueue(runtime, "testjobs.permanent"),
    }
    with runtime.jobs.notifier.subscribe([f"job:{ids['count']}"]) as wakeups:
        workers.append(start_worker(env, tmp_path / "worker.log"))
        assert wakeups.wait_sync(30), "no live update from the worker process"
    for name in ("noop", "count", "flaky"):
        assert wait_status(runtime, ids[name], "succeeded", timeout=30).status == "succeeded", workers[
            0
        ].log()
    assert job_row(runtime, ids["count"]).output["total"] == 55  # type: ignore[index]
    assert job_row(runtime, ids["flaky"]).attempts == 2
    assert wait_status(runtime, ids["permanent"], "failed").attempts == 1
    with runtime.db.read() as session:
        worker_names = set(session.scalars(select(JobRun.worker)))
    assert all(name.endswith("/rq") for name in worker_names)
    workers[0].stop()
    assert workers[0].process.returncode == 0, workers[0].log()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_sigkill_of_a_worker_mid_job_resumes_from_the_checkpoint(
    deployment: tuple[Runtime, dict[str, str]], workers: list[Worker], tmp_path: Path
) -> None:
    runtime, env = deployment
    job_id = enqueue(runtime, "testjobs.count", {"to": 40, "delay": 0.08})
    # Two workers start at once (a start-up is the slow part here): whichever claims the job is killed,
    # the other one, idle meanwhile, has to finish it.
    workers.append(start_worker(env, tmp_path / "worker-a.log", "--processes", "1"))
    workers.append(start_worker(env, tmp_path / "worker-b.log", "--processes", "1"))
    wait_status(runtime, job_id, "running", timeout=60)
    wait_for(lambda: (job_row(runtime, job_id).checkpoint or {}).get("i", 0) >= 25, timeout=30)
    holder = holding(workers, job_row(runtime, job_id).lease_owner)
    holder.kill()
    killed_at = time.monotonic()
    checkpoint = job_row(runtime, job_id).checkpoint
    assert checkpoint is not None and checkpoint["i"] < 40
    assert job_row(runtime, job_id).status == "running"  # as far as the database knows

    done = wait_status(runtime, job_id, "succeeded", timeout=30)
    recovered_in = time.monotonic() - killed_at
    assert recovered_in < 30

    reference = enqueue(runtime, "testjobs.count", {"to": 40, "delay": 0.0})
    expected = wait_status(runtime, reference, "succeeded", timeout=30)
    assert done.output is not None and expected.output is not None
    assert done.output["total"] == expected.output["total"] == 820
    assert artifact_hashes(runtime, job_id) == artifact_hashes(runtime, reference)
    with runtime.db.read() as session:
        versions = session.scalar(select(func.count()).where(ArtifactVersion.job_id == job_id))
        runs = session.scalars(select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.attempt)).all()
    assert versions == 2  # the halfway artifact and the result, once each
    assert [(run.attempt, run.outcome) for run in runs] == [(1, "lost"), (2, "succeeded")]
    error = str(runs[0].error)
    assert "its process is gone" in error or "lease expired" in error, error


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_poison_job_fails_after_max_attempts_without_holding_up_others(
    deployment: tuple[Runtime, dict[str, str]], workers: list[Worker], tmp_path: Path
) -> None:
    runtime, env = deployment
    workers.append(start_worker(env, tmp_path / "worker.log", "--processes", "2"))
    poison = enqueue(runtime, "testjobs.crash")
    others = [enqueue(runtime, "testjobs.count", {"to": 5, "delay": 0.02}) for _ in range(10)]
    for job_id in others:
        wait_status(runtime, job_id, "succeeded", timeout=40)
    failed = wait_status(runtime, poison, "failed", timeout=40)
    assert failed.attempts == 3
    assert failed.error is not None and failed.error.startswith(
        "failed after 3 attempts: the worker running attempt 3"
    )
    with runtime.db.read() as session:
        runs = session.scalars(select(JobRun).where(JobRun.job_id == poison).order_by(JobRun.attempt)).all()
    assert [run.outcome for run in runs] == ["lost", "lost", "lost"]
    assert all(run.error and "exited with status 3" in run.error for run in runs), [r.error for r in runs]
    assert workers[0].alive()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own (it gets flushed), on a free port."""
    if shutil.which("redis-server") is None:
        service_missing("redis-server (for a Redis of the test's own)", FileNotFoundError("not on PATH"))
    with redis_server(tmp_path) as url:
        yield url


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_flushing_redis_loses_no_job(
    tmp_path: Path, database_url: str, own_redis: str, workers: list[Worker]
) -> None:
    settings = settings_for(tmp_path, database_url, own_redis, "flush")
    with open_runtime(settings) as runtime:
        workers.append(start_worker(env_for(settings), tmp_path / "worker.log", "--processes", "2"))
        ids = [enqueue(runtime, "testjobs.count", {"to": 8, "delay": 0.05}) for _ in range(12)]
        wait_for(lambda: sum(job_row(runtime, i).status == "running" for i in ids) >= 1, timeout=30)
        statuses = {job_row(runtime, i).status for i in ids}
        assert "queued" in statuses, "flush while some jobs still wait"
        redis.Redis.from_url(own_redis).flushall()
        for job_id in ids:
            wait_status(runtime, job_id, "succeeded", timeout=60)
        assert {(job_row(runtime, i).output or {}).get("total") for i in ids} == {36}


def test_a_server_killed_between_commit_and_dispatch_runs_the_job_on_restart(
    tmp_path: Path, database_url: str
) -> None:
    """In-process dispatch (no Redis): the restarted server finds the committed job and runs it."""
    plain = process_env(tmp_path, database_url, job_poll_seconds=POLL, job_lease_seconds=LEASE)
    crashing = {**plain, CRASH_AFTER_COMMIT: "1"}
    with start_server(crashing, tmp_path / "server-1.log") as server:
        with pytest.raises(httpx.TransportError):
            graphql(server.graphql_url, ENQUEUE, {"type": "testjobs.noop", "input": {"n": 1}})
        server.process.wait(timeout=10)
        assert server.process.returncode == 70
    settings = make_settings(tmp_path, database_url)
    with open_runtime(settings, start_jobs=False) as runtime:
        with runtime.db.read() as session:
            job = session.scalar(select(Job))
        assert job is not None and job.status == "queued"  # committed, never dispatched
        with start_server(plain, tmp_path / "server-2.log"):
            assert wait_status(runtime, job.id, "succeeded", timeout=20).output == {
                "ok": True,
                "echo": {"n": 1},
            }


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_server_killed_between_commit_and_enqueue_loses_no_job_to_rq(
    tmp_path: Path, database_url: str, redis_url: str, redis_namespace: str, workers: list[Worker]
) -> None:
    """With RQ: the API process dies before enqueueing; a worker's relay dispatches the committed job."""
    rq_settings = settings_for(tmp_path, database_url, redis_url, redis_namespace)
    rq_env = env_for(rq_settings)
    workers.append(start_worker(rq_env, tmp_path / "worker.log", "--processes", "1"))
    with start_server({**rq_env, CRASH_AFTER_COMMIT: "1"}, tmp_path / "server-3.log") as server:
        with pytest.raises(httpx.TransportError):
            graphql(server.graphql_url, ENQUEUE, {"type": "testjobs.noop", "input": {"n": 2}})
        server.process.wait(timeout=10)
    with open_runtime(rq_settings, start_jobs=False) as runtime:
        with runtime.db.read() as session:
            relayed = session.scalar(select(Job).where(Job.input["n"].as_integer() == 2))
        assert relayed is not None
        assert wait_status(runtime, relayed.id, "succeeded", timeout=20).status == "succeeded"


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_one_idempotency_key_from_many_clients_creates_one_job(tmp_path: Path, database_url: str) -> None:
    env = process_env(tmp_path, database_url, job_poll_seconds=POLL)
    with start_server(env, tmp_path / "server.log") as server:
        start = threading.Barrier(24)
        answers: list[str] = []

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                start.wait()
                response = http.post(
                    server.graphql_url,
                    json={
                        "query": ENQUEUE,
                        "variables": {"type": "testjobs.noop", "input": {"x": 1}, "key": "one"},
                    },
                )
                answers.append(response.json()["data"]["enqueueJob"]["job"]["id"])

        threads = [threading.Thread(target=client) for _ in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(answers) == 24 and len(set(answers)) == 1
    settings = make_settings(tmp_path, database_url)
    with open_runtime(settings, start_jobs=False) as runtime:
        with runtime.db.read() as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 1
        assert job_row(runtime, from_global_id(answers[0])[1]).idempotency_key == "one"


def rq_queue(runtime: Runtime, queue: str = "default") -> Queue:
    assert runtime.jobs.rq is not None
    return runtime.jobs.rq.queue(queue)


def test_a_message_that_ended_without_running_its_job_is_sent_again(
    tmp_path: Path, database_url: str, redis_url: str, redis_namespace: str, workers: list[Worker]
) -> None:
    """An RQ message can end without running its jobs: ``drain`` raised because the database was
    unreachable, say, and RQ filed the message as failed (kept for a day). The job is still queued in the
    database, so the relay must wake a worker again instead of taking the failed message for pending."""
    from rq.job import Job as RqJob
    from rq.job import JobStatus

    settings = settings_for(tmp_path, database_url, redis_url, redis_namespace)
    connection = redis.Redis.from_url(redis_url)
    with open_runtime(settings) as runtime:
        job_id = enqueue(runtime, "testjobs.noop", {"n": 3})
        queue = rq_queue(runtime)
        wait_for(lambda: queue.count == 1, timeout=10)
        (message_id,) = queue.get_job_ids()
        message = RqJob.fetch(message_id, connection=connection)
        assert message.func_name == "workers.rq_worker.drain" and message.args == ("default",)
        # What RQ records when the function raises: out of its queue, status failed.
        connection.lrem(queue.key, 0, message_id)
        message.set_status(JobStatus.FAILED)
        assert job_row(runtime, job_id).status == "queued"

        workers.append(start_worker(env_for(settings), tmp_path / "worker.log", "--processes", "1"))
        assert wait_status(runtime, job_id, "succeeded", timeout=30).output == {"ok": True, "echo": {"n": 3}}


def test_a_batch_of_jobs_sends_one_wake_up_per_idle_worker_and_one_worker_drains_it(
    tmp_path: Path, database_url: str, redis_url: str, redis_namespace: str, workers: list[Worker]
) -> None:
    """A message wakes a worker for a queue, not for a job: 30 jobs committed together with no worker
    listening get one wake-up, and the worker that takes it runs all 30, each with its own run and its
    own JOB_STARTED and JOB_SUCCEEDED events."""
    settings = settings_for(tmp_path, database_url, redis_url, redis_namespace)
    with open_runtime(settings) as runtime:
        made = enqueue_jobs(
            owner_ops(runtime),
            runtime.jobs.catalog,
            {"jobs": [{"job_type": "testjobs.noop", "input": {"i": i}} for i in range(30)]},
        )
        ids = [job.id for job, _ in made]
        queue = rq_queue(runtime)
        assert queue.count == 1
        workers.append(start_worker(env_for(settings), tmp_path / "worker.log", "--processes", "1"))
        for i, job_id in enumerate(ids):
            done = wait_status(runtime, job_id, "succeeded", timeout=30)
            assert done.output == {"ok": True, "echo": {"i": i}}
        with runtime.db.read() as session:
            runs = session.scalars(select(JobRun).where(JobRun.job_id.in_(ids))).all()
            events = session.execute(
                select(Event.event_type, func.count())
                .where(Event.entity_id.in_(ids))
                .group_by(Event.event_type)
            ).all()
        assert sorted((run.job_id, run.attempt, run.outcome) for run in runs) == sorted(
            (job_id, 1, "succeeded") for job_id in ids
        )
        assert dict(events) == {"JOB_QUEUED": 30, "JOB_STARTED": 30, "JOB_SUCCEEDED": 30}


def test_a_drain_that_stops_at_its_bound_wakes_a_worker_for_the_rest(
    tmp_path: Path, database_url: str, redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker runs a bounded number of jobs per wake-up; when it stops at the bound it sends the queue's
    wake-up again, so a burst worker (which stops once RQ's queues are empty) still runs every job."""
    from workers import rq_worker

    monkeypatch.setattr(rq_worker, "DRAIN_MAX_JOBS", 3)
    settings = settings_for(tmp_path, database_url, redis_url, redis_namespace)
    with open_runtime(settings, start_jobs=False) as runtime:
        ids = [enqueue(runtime, "testjobs.noop", {"i": i}) for i in range(10)]
        queue = rq_queue(runtime)
        assert queue.count == 1  # the first job's wake-up; the later ones found it waiting
        assert rq_worker.run_worker(runtime, ["default"], burst=True)
        assert [job_row(runtime, job_id).status for job_id in ids] == ["succeeded"] * 10
        assert queue.count == 0


def test_the_relay_wakes_a_worker_for_a_queue_whose_wake_up_is_gone(
    tmp_path: Path, database_url: str, redis_url: str, redis_namespace: str
) -> None:
    """The relay sends a wake-up for a queue with due jobs and none waiting, and none while one waits (until
    the queue's oldest job is late)."""
    settings = settings_for(tmp_path, database_url, redis_url, redis_namespace)
    connection = redis.Redis.from_url(redis_url)
    with open_runtime(settings, start_jobs=False) as runtime:
        for i in range(5):
            enqueue(runtime, "testjobs.noop", {"i": i})
        queue = rq_queue(runtime)
        assert queue.count == 1
        assert runtime.jobs.relay(grace_seconds=0.0) == 0  # a wake-up waits, and it is not late
        connection.delete(queue.key)  # lost (a flush, a restart without persistence)
        assert runtime.jobs.relay(grace_seconds=3600.0) == 0  # not overdue yet: the API's own may come
        assert runtime.jobs.relay(grace_seconds=0.0) == 1
        assert queue.count == 1
        assert queue.get_jobs()[0].func_name == "workers.rq_worker.drain"
