"""Durable jobs on the in-process dispatcher, on SQLite and PostgreSQL: the outbox and its events, leases,
retries with backoff, permanent failures, timeouts, cancellation, the reaper and fencing, idempotency
keys under concurrency, access, GraphQL (queries, mutations, subscriptions) and the ``concord jobs`` CLI.

The same runner serves the RQ dispatcher; tests/test_jobs_rq.py runs it in real worker processes.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import GraphQL, make_settings
from fastapi.testclient import TestClient
from jobs_support import job_row, new_user, open_runtime, owner_ops, wait_for, wait_status
from sqlalchemy import func, select

from concord_core.api.app import create_app
from concord_core.api.gql.ids import from_global_id
from concord_core.api.runtime import Runtime
from concord_core.auth.principal import Principal
from concord_core.cli.main import main
from concord_core.db.models import AuditEntry, Event, Job, JobArtifact, JobRun, Membership
from concord_core.events import tail
from concord_core.events.log import verify_chain
from concord_core.jobs.control import cancel_job, get_job, retry_job
from concord_core.jobs.enqueue import enqueue_job, enqueue_jobs
from concord_core.jobs.lease import LeaseLost, backoff_seconds, claim, renew
from concord_core.jobs.transitions import Succeeded, reap_expired
from concord_core.operators.dtus import create_dtu
from concord_core.operators.errors import ErrorCode, OperatorError
from concord_core.settings import Settings

ENQUEUE = """
mutation Enqueue($type: String!, $input: JSON, $key: String) {
  enqueueJob(type: $type, input: $input, idempotencyKey: $key) {
    created
    job { id status }
    errors { field code message }
  }
}"""
JOB = """
query Job($id: ID!) {
  job(id: $id) {
    id type status attempts maxAttempts progress progressMessage output error
    runs { attempt worker outcome error startedAt finishedAt }
    artifacts { step role version artifact { id name latest { sha256 } } }
  }
}"""


@pytest.fixture
def job_settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path, database_url, job_lease_seconds=1.0, job_retry_base_seconds=0.05, job_poll_seconds=0.1
    )


@pytest.fixture
def rt(job_settings: Settings) -> Iterator[Runtime]:
    with open_runtime(job_settings) as runtime:
        yield runtime


@pytest.fixture
def idle(job_settings: Settings) -> Iterator[Runtime]:
    """A runtime whose runners are not started: jobs stay queued until a test runs them."""
    with open_runtime(job_settings, start_jobs=False) as runtime:
        yield runtime


def enqueue(runtime: Runtime, job_type: str, payload: dict[str, Any] | None = None, **kwargs: Any) -> Job:
    job, _created = enqueue_job(
        owner_ops(runtime), runtime.jobs.catalog, {"job_type": job_type, "input": payload or {}, **kwargs}
    )
    return job


def events_for(runtime: Runtime, job_id: str) -> list[str]:
    with runtime.db.read() as session:
        rows = session.scalars(select(Event).where(Event.entity_id == job_id).order_by(Event.seq))
        return [row.event_type for row in rows]


def runs_of(runtime: Runtime, job_id: str) -> list[JobRun]:
    with runtime.db.read() as session:
        return list(session.scalars(select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.attempt)))


# --- the life of a job --------------------------------------------------------------------------------------


def test_a_job_runs_with_events_audit_runs_and_artifacts(rt: Runtime) -> None:
    with TestClient(create_app(rt)) as client:
        gql = GraphQL(client)
        payload = gql.run(ENQUEUE, {"type": "testjobs.count", "input": {"to": 6}})["enqueueJob"]
        assert payload["errors"] == [] and payload["created"] is True
        job_id = payload["job"]["id"]
        done = wait_for(lambda: (j := gql.run(JOB, {"id": job_id})["job"])["status"] == "SUCCEEDED" and j)
    assert done["output"]["total"] == 21
    assert done["progress"] == 1.0 and done["attempts"] == 1
    assert [(run["attempt"], run["outcome"]) for run in done["runs"]] == [(1, "succeeded")]
    assert {(a["step"], a["role"]) for a in done["artifacts"]} == {("half", "partial"), ("result", "sum")}
    assert all(a["artifact"]["latest"]["sha256"] for a in done["artifacts"])

    row = job_row(rt, from_global_id(job_id)[1])
    assert events_for(rt, row.id) == ["JOB_QUEUED", "JOB_STARTED", "JOB_SUCCEEDED"]  # progress is no event
    with rt.db.read() as session:
        actions = session.scalars(
            select(AuditEntry.action).where(AuditEntry.target_id == row.id).order_by(AuditEntry.id)
        ).all()
        assert verify_chain(session).ok
    assert actions[0] == "job.enqueue" and "job.start" in actions and actions[-1] == "job.succeeded"


def test_idempotency_key_returns_the_job_or_conflicts(idle: Runtime) -> None:
    ops, catalog = owner_ops(idle), idle.jobs.catalog
    first, created = enqueue_job(
        ops, catalog, {"job_type": "testjobs.noop", "input": {"a": 1}, "idempotency_key": "k"}
    )
    again, created_again = enqueue_job(
        ops, catalog, {"job_type": "testjobs.noop", "input": {"a": 1}, "idempotency_key": "k"}
    )
    assert created and not created_again and again.id == first.id
    with pytest.raises(OperatorError) as refused:
        enqueue_job(ops, catalog, {"job_type": "testjobs.noop", "input": {"a": 2}, "idempotency_key": "k"})
    assert refused.value.code is ErrorCode.CONFLICT and refused.value.errors[0].field == "idempotencyKey"
    assert events_for(idle, first.id) == ["JOB_QUEUED"]  # the repeat wrote nothing


ENQUEUE_MANY = """
mutation EnqueueMany($jobs: [JobRequest!]!) {
  enqueueJobs(jobs: $jobs) { created jobs { id status } errors { field code message } }
}"""


def test_a_batch_is_queued_in_one_transaction_with_an_event_and_audit_row_per_job(rt: Runtime) -> None:
    with TestClient(create_app(rt)) as client:
        gql = GraphQL(client)
        jobs = [{"type": "testjobs.count", "input": {"to": n}} for n in (2, 3, 4)]
        payload = gql.run(ENQUEUE_MANY, {"jobs": jobs})["enqueueJobs"]
        assert payload["errors"] == [] and payload["created"] == [True, True, True]
        ids = [from_global_id(job["id"])[1] for job in payload["jobs"]]
        for job_id, n in zip(ids, (2, 3, 4), strict=True):
            done = wait_status(rt, job_id)
            assert done.input == {"to": n} and done.output is not None
            assert done.output["total"] == n * (n + 1) // 2
            assert events_for(rt, job_id) == ["JOB_QUEUED", "JOB_STARTED", "JOB_SUCCEEDED"]
    with rt.db.read() as session:
        enqueued = session.scalars(
            select(AuditEntry.target_id).where(AuditEntry.action == "job.enqueue").order_by(AuditEntry.id)
        ).all()
        batches = session.scalars(select(AuditEntry).where(AuditEntry.action == "job.enqueue_batch")).all()
        queued_seqs = session.scalars(
            select(Event.request_id).where(Event.event_type == "JOB_QUEUED", Event.entity_id.in_(ids))
        ).all()
        assert verify_chain(session).ok
    assert sorted(enqueued) == sorted(ids)
    assert len(batches) == 1 and batches[0].detail == {"jobs": 3}
    assert len(set(queued_seqs)) == 1  # one request, one transaction


def test_a_bad_job_in_a_batch_refuses_the_whole_batch(idle: Runtime) -> None:
    ops, catalog = owner_ops(idle), idle.jobs.catalog
    good = {"job_type": "testjobs.noop", "input": {}}
    for bad, field in (
        ({"job_type": "testjobs.nosuch", "input": {}}, "jobs.1.type"),
        ({"job_type": "testjobs.noop", "input": {"x": float("nan")}}, "jobs.1.input"),
        ({"job_type": "testjobs.noop", "input": {}, "extra": 1}, "jobs.1.extra"),
    ):
        with pytest.raises(OperatorError) as refused:
            enqueue_jobs(ops, catalog, {"jobs": [good, bad, good]})
        assert refused.value.code is ErrorCode.VALIDATION
        assert [error.field for error in refused.value.errors] == [field]
    for jobs in ([], [good] * 101):
        with pytest.raises(OperatorError) as refused:
            enqueue_jobs(ops, catalog, {"jobs": jobs})
        assert refused.value.code is ErrorCode.VALIDATION
    with idle.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Event).where(Event.entity_type == "job")) == 0


def test_idempotency_keys_in_a_batch(idle: Runtime) -> None:
    ops, catalog = owner_ops(idle), idle.jobs.catalog
    first, _ = enqueue_job(
        ops, catalog, {"job_type": "testjobs.noop", "input": {"a": 1}, "idempotency_key": "k"}
    )
    results = enqueue_jobs(
        ops,
        catalog,
        {
            "jobs": [
                {"job_type": "testjobs.noop", "input": {"a": 1}, "idempotency_key": "k"},
                {"job_type": "testjobs.noop", "input": {"b": 1}, "idempotency_key": "new"},
                {"job_type": "testjobs.noop", "input": {"b": 1}, "idempotency_key": "new"},
                {"job_type": "testjobs.noop", "input": {}},
            ]
        },
    )
    assert [created for _, created in results] == [False, True, False, True]
    assert results[0][0].id == first.id and results[1][0].id == results[2][0].id
    assert events_for(idle, first.id) == ["JOB_QUEUED"]
    again = enqueue_jobs(
        ops, catalog, {"jobs": [{"job_type": "testjobs.noop", "input": {"b": 1}, "idempotency_key": "new"}]}
    )
    assert [(job.id, created) for job, created in again] == [(results[1][0].id, False)]
    for jobs in (
        [{"job_type": "testjobs.noop", "input": {"a": 2}, "idempotency_key": "k"}],
        [
            {"job_type": "testjobs.noop", "input": {"c": 1}, "idempotency_key": "twice"},
            {"job_type": "testjobs.noop", "input": {"c": 2}, "idempotency_key": "twice"},
        ],
    ):
        with pytest.raises(OperatorError) as refused:
            enqueue_jobs(ops, catalog, {"jobs": [{"job_type": "testjobs.noop", "input": {}}, *jobs]})
        assert refused.value.code is ErrorCode.CONFLICT
        assert refused.value.errors[0].field == f"jobs.{len(jobs)}.idempotencyKey"
    with idle.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 3


def test_the_same_key_from_many_clients_at_once_creates_one_job(idle: Runtime) -> None:
    ops, catalog = owner_ops(idle), idle.jobs.catalog
    start = threading.Barrier(16)
    results: list[str] = []
    failures: list[BaseException] = []

    def client() -> None:
        try:
            start.wait()
            job, _ = enqueue_job(
                ops, catalog, {"job_type": "testjobs.noop", "input": {"x": 1}, "idempotency_key": "once"}
            )
            results.append(job.id)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and len(results) == 16 and len(set(results)) == 1
    with idle.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        queued = session.scalar(select(func.count()).where(Event.event_type == "JOB_QUEUED"))
    assert queued == 1


def test_bad_requests_write_nothing(idle: Runtime) -> None:
    ops, catalog = owner_ops(idle), idle.jobs.catalog
    for data, field in (
        ({"job_type": "nope.nothing"}, "type"),
        ({"job_type": "testjobs.noop", "input": {"big": "x" * 300_000}}, "input"),
        ({"job_type": "testjobs.noop", "idempotency_key": ""}, "idempotency_key"),
    ):
        with pytest.raises(OperatorError) as refused:
            enqueue_job(ops, catalog, data)
        assert refused.value.errors[0].field == field
    with idle.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


# --- failure, retry, backoff, timeout -----------------------------------------------------------------------


def test_backoff_doubles_with_jitter() -> None:
    for attempt in range(1, 8):
        delay = 2.0 * 2 ** (attempt - 1)
        samples = [backoff_seconds(attempt, 2.0) for _ in range(200)]
        assert all(delay / 2 <= s <= delay for s in samples)
        assert len({round(s, 6) for s in samples}) > 100  # jittered, not lockstep
    assert backoff_seconds(40, 2.0) <= 600


def test_a_flaky_job_is_retried_until_it_succeeds(rt: Runtime) -> None:
    job = enqueue(rt, "testjobs.flaky", {"succeed_on": 3})
    done = wait_status(rt, job.id, "succeeded", "failed")
    assert done.status == "succeeded" and done.output == {"attempt": 3} and done.error is None
    runs = runs_of(rt, job.id)
    assert [(r.attempt, r.outcome) for r in runs] == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    assert runs[0].error == "RuntimeError: flaky failure on attempt 1"
    assert events_for(rt, job.id) == [
        "JOB_QUEUED",
        "JOB_STARTED",
        "JOB_RETRY_SCHEDULED",
        "JOB_STARTED",
        "JOB_RETRY_SCHEDULED",
        "JOB_STARTED",
        "JOB_SUCCEEDED",
    ]


def test_retries_stop_at_max_attempts(rt: Runtime) -> None:
    job = enqueue(rt, "testjobs.flaky", {"succeed_on": 99})
    done = wait_status(rt, job.id, "failed")
    assert done.attempts == 4
    assert done.error == "failed after 4 attempts: RuntimeError: flaky failure on attempt 4"
    assert [r.outcome for r in runs_of(rt, job.id)] == ["failed"] * 4


def test_a_permanent_error_fails_at_once(rt: Runtime) -> None:
    job = enqueue(rt, "testjobs.permanent")
    done = wait_status(rt, job.id, "failed")
    assert done.attempts == 1 and done.error == "PermanentJobError: this input can never work"


def test_a_job_past_its_timeout_is_stopped(rt: Runtime) -> None:
    job = enqueue(rt, "testjobs.timeout")
    done = wait_status(rt, job.id, "failed")
    assert done.error == "failed after 2 attempts: timed out after 1 s"
    assert [r.outcome for r in runs_of(rt, job.id)] == ["timed_out", "timed_out"]


# --- cancellation and manual retry --------------------------------------------------------------------------


def test_a_drain_runs_a_queue_job_after_job_and_stops_at_its_bound_holding_nothing(idle: Runtime) -> None:
    """What an RQ wake-up runs: the due jobs of a queue one after another, each success recorded in the
    transaction that claims the next job; a failure in between is recorded on its own and the drain goes
    on. At its bound it stops with no job claimed, and every transition has its event, run and audit row."""
    ids = [
        enqueue(idle, job_type, payload).id
        for job_type, payload in [
            ("testjobs.noop", {"i": 0}),
            ("testjobs.permanent", {}),
            ("testjobs.noop", {"i": 2}),
            ("testjobs.noop", {"i": 3}),
            ("testjobs.noop", {"i": 4}),
            ("testjobs.noop", {"i": 5}),
        ]
    ]
    assert idle.jobs.drain("default", "here/1/drain", max_jobs=4, max_seconds=60) == (4, True)
    assert [job_row(idle, job_id).status for job_id in ids] == [
        "succeeded",
        "failed",
        "succeeded",
        "succeeded",
        "queued",  # the bound was reached as the job before it ended: not claimed
        "queued",
    ]
    assert idle.jobs.drain("default", "here/1/drain", max_jobs=10, max_seconds=60) == (2, False)
    assert idle.jobs.drain("default", "here/1/drain", max_jobs=10, max_seconds=60) == (0, False)
    with idle.db.read() as session:
        events = session.execute(
            select(Event.event_type, Event.entity_id)
            .where(Event.entity_id.in_(ids), Event.event_type != "JOB_QUEUED")
            .order_by(Event.seq)
        ).all()
        audited = session.execute(
            select(AuditEntry.action, func.count())
            .where(AuditEntry.target_id.in_(ids), AuditEntry.action != "job.enqueue")
            .group_by(AuditEntry.action)
        ).all()
        assert verify_chain(session).ok
    ended = {ids[1]: "JOB_FAILED"}
    assert [tuple(row) for row in events] == [
        pair
        for job_id in ids
        for pair in (("JOB_STARTED", job_id), (ended.get(job_id, "JOB_SUCCEEDED"), job_id))
    ]
    assert dict(audited) == {"job.start": 6, "job.succeeded": 5, "job.failed": 1}
    for job_id in ids:
        (run,) = runs_of(idle, job_id)
        assert run.finished_at is not None and run.outcome == ("failed" if job_id == ids[1] else "succeeded")


def test_cancelling_a_queued_job_is_immediate(idle: Runtime) -> None:
    job = enqueue(idle, "testjobs.sleep", {"seconds": 10})
    cancelled = cancel_job(owner_ops(idle), idle.jobs.catalog, job.id)
    assert cancelled.status == "cancelled" and runs_of(idle, job.id) == []
    assert idle.jobs.run_job(job.id) is False  # nothing to claim any more
    with pytest.raises(OperatorError) as again:
        cancel_job(owner_ops(idle), idle.jobs.catalog, job.id)
    assert again.value.code is ErrorCode.CONFLICT


def test_cancelling_a_running_job_stops_it_at_its_next_progress_call(rt: Runtime) -> None:
    job = enqueue(rt, "testjobs.sleep", {"seconds": 30})
    wait_status(rt, job.id, "running")
    wait_for(lambda: job_row(rt, job.id).progress > 0)
    asked = cancel_job(owner_ops(rt), rt.jobs.catalog, job.id)
    assert asked.status == "running" and asked.cancel_requested
    done = wait_status(rt, job.id, "cancelled", timeout=5)
    assert [r.outcome for r in runs_of(rt, done.id)] == ["cancelled"]
    assert events_for(rt, job.id)[-2:] == ["JOB_CANCEL_REQUESTED", "JOB_CANCELLED"]


def test_retry_job_queues_a_failed_job_again(rt: Runtime) -> None:
    job = enqueue(rt, "testjobs.permanent")
    wait_status(rt, job.id, "failed")
    again = retry_job(owner_ops(rt), rt.jobs.catalog, job.id)
    assert again.status == "queued" and again.max_attempts == 1 + 5 and again.error is None
    done = wait_status(rt, job.id, "failed")
    assert done.attempts == 2 and [r.attempt for r in runs_of(rt, job.id)] == [1, 2]
    with pytest.raises(OperatorError) as refused:
        retry_job(owner_ops(rt), rt.jobs.catalog, enqueue(rt, "testjobs.sleep", {"seconds": 5}).id)
    assert refused.value.code is ErrorCode.CONFLICT


def test_stopping_the_runners_hands_a_running_job_back(job_settings: Settings) -> None:
    with open_runtime(job_settings) as runtime:
        job = enqueue(runtime, "testjobs.sleep", {"seconds": 30})
        wait_status(runtime, job.id, "running")
        runtime.jobs.stop()
        back = job_row(runtime, job.id)
        assert back.status == "queued" and back.attempts == 0 and back.lease_owner is None
        assert [r.outcome for r in runs_of(runtime, job.id)] == ["interrupted"]
        runtime.jobs.start()  # a restart picks it up again
        wait_status(runtime, job.id, "running")
        assert job_row(runtime, job.id).attempts == 1


# --- leases: the reaper and fencing -------------------------------------------------------------------------


def test_the_reaper_requeues_a_dead_workers_job_and_it_resumes(idle: Runtime) -> None:
    job = enqueue(idle, "testjobs.count", {"to": 4})
    ghost = claim(idle.db, "elsewhere/1/ghost", 0.05, job_id=job.id)
    assert ghost is not None and claim(idle.db, "other/2/x", 10, job_id=job.id) is None  # taken
    renew(idle.db, ghost, 0.05, checkpoint={"i": 2, "total": 3})  # it got halfway, then died
    wait_for(lambda: idle.jobs.maintenance.sweep().reaped, timeout=5)
    requeued = job_row(idle, job.id)
    assert requeued.status == "queued" and requeued.attempts == 1 and requeued.lease_owner is None
    wait_for(lambda: idle.jobs.run_next("here/3/test"), timeout=5)  # once its backoff is over
    done = job_row(idle, job.id)
    assert done.status == "succeeded" and done.output is not None and done.output["total"] == 10
    runs = runs_of(idle, job.id)
    assert [(r.worker, r.outcome) for r in runs] == [
        ("elsewhere/1/ghost", "lost"),
        ("here/3/test", "succeeded"),
    ]
    assert (
        runs[0].error is not None
        and "elsewhere/1/ghost" in runs[0].error
        and "lease expired" in runs[0].error
    )
    with pytest.raises(LeaseLost):  # the presumed-dead worker comes back: it is fenced out
        idle.jobs.settle(ghost, Succeeded({"total": -1}))
    with pytest.raises(LeaseLost):
        renew(idle.db, ghost, 10, checkpoint={"i": 0})
    assert job_row(idle, job.id).output == done.output


def test_a_job_whose_workers_keep_dying_fails_with_a_clear_error(idle: Runtime) -> None:
    job = enqueue(idle, "testjobs.noop")
    for worker in ("host/1/w", "host/2/w", "host/3/w"):
        wait_for(partial(claim, idle.db, worker, 0.01, job_id=job.id), timeout=5)
        wait_for(lambda: reap_expired(idle.db, retry_base=0.01, on_terminal=idle.jobs.on_terminal), timeout=5)
    failed = job_row(idle, job.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.startswith(
        "failed after 3 attempts: the worker running attempt 3 (host/3/w) stopped responding"
    )
    assert [r.outcome for r in runs_of(idle, job.id)] == ["lost"] * 3


# --- access -------------------------------------------------------------------------------------------------


def _join(runtime: Runtime, principal: Principal, workspace_id: str, role: str) -> Principal:
    with runtime.db.write() as session:
        session.add(Membership(workspace_id=workspace_id, user_id=principal.user_id, role=role))
    return runtime.principal_for_user(str(principal.user_id))


def test_jobs_are_readable_by_workspace_members_and_editable_by_editors(idle: Runtime) -> None:
    alice = new_user(idle, "alice")
    ops = idle.operation_context(alice)
    job, _ = enqueue_job(ops, idle.jobs.catalog, {"job_type": "testjobs.sleep", "input": {"seconds": 1}})
    stranger = new_user(idle, "bob")
    viewer = _join(idle, new_user(idle, "carol"), job.workspace_id, "viewer")
    editor = _join(idle, new_user(idle, "dave"), job.workspace_id, "editor")
    with idle.db.read() as session:
        with pytest.raises(OperatorError) as hidden:
            get_job(idle.operation_context(stranger), session, job.id)
        assert hidden.value.code is ErrorCode.NOT_FOUND
        assert get_job(idle.operation_context(viewer), session, job.id).id == job.id
    with pytest.raises(OperatorError) as hidden_cancel:
        cancel_job(idle.operation_context(stranger), idle.jobs.catalog, job.id)
    assert hidden_cancel.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(OperatorError) as forbidden:
        cancel_job(idle.operation_context(viewer), idle.jobs.catalog, job.id)
    assert forbidden.value.code is ErrorCode.FORBIDDEN
    assert cancel_job(idle.operation_context(editor), idle.jobs.catalog, job.id).status == "cancelled"
    with pytest.raises(OperatorError) as not_yours:  # enqueueing into someone else's workspace
        enqueue_job(
            idle.operation_context(stranger),
            idle.jobs.catalog,
            {"job_type": "testjobs.noop", "workspace_id": job.workspace_id},
        )
    assert not_yours.value.code is ErrorCode.NOT_FOUND


def test_the_event_tail_shows_only_what_the_principal_may_see(idle: Runtime) -> None:
    alice = new_user(idle, "alice")
    ops = idle.operation_context(alice)
    with idle.db.read() as session:
        start = tail.head(session)
    secret = create_dtu(ops, {"title": "private note"})
    shared = create_dtu(ops, {"title": "for the team", "visibility": "workspace"})
    job, _ = enqueue_job(ops, idle.jobs.catalog, {"job_type": "testjobs.noop"})
    viewer = _join(idle, new_user(idle, "carol"), job.workspace_id, "viewer")
    stranger = new_user(idle, "bob")
    with idle.db.read() as session:
        mine = tail.read_after(session, alice, start)
        theirs = tail.read_after(session, viewer, start)
        nobody = tail.read_after(session, stranger, start)
        only_jobs = tail.read_after(session, viewer, start, ["JOB_QUEUED"])
    assert {e.entity_id for e in mine.events} >= {secret.id, shared.id, job.id}
    assert {e.entity_id for e in theirs.events} == {shared.id, job.id}
    assert nobody.events == [] and nobody.cursor == mine.cursor  # the cursor still moves past them
    assert [e.event_type for e in only_jobs.events] == ["JOB_QUEUED"]
    with idle.db.read() as session:
        assert tail.read_after(session, viewer, mine.cursor).events == []


# --- GraphQL ------------------------------------------------------------------------------------------------


def test_graphql_mutations_and_the_jobs_connection(rt: Runtime) -> None:
    with TestClient(create_app(rt)) as client:
        gql = GraphQL(client)
        first = gql.run(ENQUEUE, {"type": "testjobs.noop", "input": {"n": 1}, "key": "g"})["enqueueJob"]
        repeat = gql.run(ENQUEUE, {"type": "testjobs.noop", "input": {"n": 1}, "key": "g"})["enqueueJob"]
        clash = gql.run(ENQUEUE, {"type": "testjobs.noop", "input": {"n": 2}, "key": "g"})["enqueueJob"]
        unknown = gql.run(ENQUEUE, {"type": "nope.nothing"})["enqueueJob"]
        assert repeat["job"]["id"] == first["job"]["id"] and repeat["created"] is False
        assert clash["errors"] == [
            {
                "field": "idempotencyKey",
                "code": "CONFLICT",
                "message": "this idempotency key was used with a different input",
            }
        ]
        assert unknown["errors"][0]["field"] == "type" and unknown["job"] is None
        failing = gql.run(ENQUEUE, {"type": "testjobs.permanent"})["enqueueJob"]["job"]["id"]
        wait_for(lambda: gql.run(JOB, {"id": failing})["job"]["status"] == "FAILED")
        retried = gql.run(
            "mutation R($id: ID!) { retryJob(id: $id) { job { status maxAttempts } errors { code } } }",
            {"id": failing},
        )["retryJob"]
        assert retried == {"job": {"status": "QUEUED", "maxAttempts": 6}, "errors": []}
        sleeper = gql.run(ENQUEUE, {"type": "testjobs.sleep", "input": {"seconds": 20}})["enqueueJob"]["job"][
            "id"
        ]
        cancelled = gql.run(
            "mutation C($id: ID!) { cancelJob(id: $id) { job { cancelRequested status } errors { code } } }",
            {"id": sleeper},
        )["cancelJob"]
        assert cancelled["errors"] == [] and (
            cancelled["job"]["cancelRequested"] or cancelled["job"]["status"] == "CANCELLED"
        )
        wait_for(lambda: gql.run(JOB, {"id": sleeper})["job"]["status"] == "CANCELLED")
        listed = gql.run(
            """query { jobs(filter: {type: ["testjobs.noop"]}, first: 10) {
                 totalCount nodes { id type status }
                 facets(fields: ["status"]) { field values { value count } } } }"""
        )["jobs"]
        assert listed["totalCount"] == 1 and listed["nodes"][0]["id"] == first["job"]["id"]
        node = gql.run("query N($id: ID!) { node(id: $id) { id ... on Job { type } } }", {"id": sleeper})
        assert node["node"] == {"id": sleeper, "type": "testjobs.sleep"}


def _subscribe(ws: Any, query: str, variables: dict[str, Any]) -> None:
    ws.send_json({"type": "connection_init"})
    assert ws.receive_json()["type"] == "connection_ack"
    ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}})


def test_job_updated_and_events_subscriptions(rt: Runtime) -> None:
    with TestClient(create_app(rt)) as client:
        gql = GraphQL(client)
        with rt.db.read() as session:
            cursor = str(tail.head(session))
        job_id = gql.run(ENQUEUE, {"type": "testjobs.count", "input": {"to": 20, "delay": 0.02}})[
            "enqueueJob"
        ]["job"]["id"]
        updates = []
        with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            _subscribe(
                ws, "subscription S($id: ID!) { jobUpdated(id: $id) { status progress } }", {"id": job_id}
            )
            while True:
                message = ws.receive_json()
                if message["type"] == "complete":
                    break
                assert message["type"] == "next", message
                updates.append(message["payload"]["data"]["jobUpdated"])
        assert updates[-1] == {"status": "SUCCEEDED", "progress": 1.0}
        assert len(updates) >= 3 and [u["progress"] for u in updates] == sorted(
            u["progress"] for u in updates
        )

        seen: list[dict[str, Any]] = []
        with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
            _subscribe(
                ws,
                "subscription E($after: String, $types: [String!]) { events(after: $after, types: $types) "
                "{ cursor type entityType entityId } }",
                {"after": cursor, "types": ["JOB_QUEUED", "JOB_SUCCEEDED"]},
            )
            while len(seen) < 4:
                if len(seen) == 2:  # the earlier job's events came from the log; now a live one
                    gql.run(ENQUEUE, {"type": "testjobs.noop"})
                message = ws.receive_json()
                assert message["type"] == "next", message
                seen.append(message["payload"]["data"]["events"])
        assert [e["type"] for e in seen] == ["JOB_QUEUED", "JOB_SUCCEEDED", "JOB_QUEUED", "JOB_SUCCEEDED"]
        assert seen[0]["entityId"] == job_id and seen[1]["entityId"] == job_id
        assert [int(e["cursor"]) for e in seen] == sorted(int(e["cursor"]) for e in seen)


def test_jobs_cli(rt: Runtime, job_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    for name, value in {
        "CONCORD_DATABASE_URL": job_settings.resolved_database_url,
        "CONCORD_STORAGE_URL": str(job_settings.storage_url),
        "CONCORD_DATA_DIR": str(job_settings.data_dir),
        "CONCORD_JOB_POLL_SECONDS": "0.1",
    }.items():
        monkeypatch.setenv(name, value)
    done = enqueue(rt, "testjobs.count", {"to": 3})
    failed = enqueue(rt, "testjobs.permanent")
    wait_status(rt, done.id, "succeeded")
    wait_status(rt, failed.id, "failed")
    capsys.readouterr()
    assert main(["jobs", "list"]) == 0
    listing = capsys.readouterr().out
    assert done.id in listing and failed.id in listing and "succeeded" in listing
    assert main(["jobs", "watch", done.id]) == 0
    watched = capsys.readouterr().out
    assert "[" + "#" * 30 + "] 100%" in watched and "succeeded" in watched
    assert main(["jobs", "watch", failed.id]) == 1
    assert "error: PermanentJobError" in capsys.readouterr().out
    assert main(["jobs", "retry", failed.id]) == 0
    assert f"{failed.id}: queued" in capsys.readouterr().out
    wait_status(rt, failed.id, "failed")
    with rt.db.read() as session:
        retried_by = session.scalar(
            select(AuditEntry.actor_id).where(
                AuditEntry.action == "job.retry", AuditEntry.target_id == failed.id
            )
        )
    assert retried_by is None  # the operator of the instance, not a user


def test_artifacts_written_twice_are_not_duplicated(idle: Runtime) -> None:
    """write_artifact keyed by (job, step, role): a second write returns the first version."""
    job = enqueue(idle, "testjobs.noop")
    held = claim(idle.db, "here/1/t", 30, job_id=job.id)
    assert held is not None
    from concord_core.jobs.context import DurableJobContext

    context = DurableJobContext(idle.jobs, held)
    first = context.write_artifact(step="s", role="r", name="a", content=b"one", media_type="text/plain")
    second = context.write_artifact(step="s", role="r", name="a", content=b"two", media_type="text/plain")
    assert first == second
    with idle.db.read() as session:
        assert session.scalar(select(func.count()).select_from(JobArtifact)) == 1
    assert hashlib.sha256(b"one").hexdigest() in {
        h for h in idle.store.iter_hashes()
    }  # content-addressed in the store
