"""``createDtu`` mutations per second, end to end over HTTP, against a real ``concord serve``.

Starts the server on a scratch data directory with default settings (one uvicorn process, JSON request
log, SQLite in WAL mode with ``synchronous=FULL``; ``--backend postgres`` for a scratch PostgreSQL
database; ``--servers N`` for N processes on the same data), then runs a few client threads, each with its
own keep-alive connection (``benchmarks.common.JsonClient``), posting ``createDtu`` as fast as the server
answers. Every answer is checked: a mutation that returns errors is counted, not timed. Prints throughput,
latency percentiles and the CPU spent per request by the server and by the client, which runs on the same
machine and takes CPU from the server.

    .venv/bin/python benchmarks/create_dtu.py                      # SQLite, 4 clients, 2000 requests
    .venv/bin/python benchmarks/create_dtu.py --backend postgres --clients 8 -n 5000 --servers 2

Target (issue 2): at least 200 createDtu per second over HTTP on a 2-core machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    DEFAULT_POSTGRES_URL,
    ROOT,
    JsonClient,
    header,
    load,
    percentile,
    postgres_database,
    tree_cpu_seconds,
)

sys.path.insert(0, str(ROOT / "tests"))
from procs import Server, server_env, start_server

TARGET = 200.0
CREATE_DTU = """
mutation CreateDtu($input: CreateDtuInput!) {
  createDtu(input: $input) { dtu { id version } errors { field code message } }
}"""


@contextmanager
def servers(
    backend: str, postgres_url: str, log_level: str, count: int, workers: int = 1
) -> Iterator[list[Server]]:
    """``count`` servers (``concord serve --workers workers``) on one scratch database and object store
    (the first one migrates it)."""
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="concord-bench-")))
        if backend == "postgres":
            database_url = stack.enter_context(postgres_database(postgres_url))
        else:
            database_url = f"sqlite:///{directory / 'concord.db'}"
        env = server_env(directory, database_url, log_level=log_level)
        running: list[Server] = []
        try:
            for index in range(count):
                running.append(
                    start_server(
                        env,
                        directory / f"server-{index}.log",
                        args=["--workers", str(workers)],
                        timeout=120,  # worker processes import everything again; slow on a busy machine
                    )
                )
            yield running
        finally:
            for server in running:
                server.stop()


def variables(client: int, n: int) -> dict[str, object]:
    return {
        "input": {
            "title": f"benchmark note {client}-{n}",
            "human": {"summary": "A DTU of typical size.", "bullets": ["one", "two", "three"]},
            "tags": ["bench", f"client-{client}"],
        }
    }


def run(urls: list[str], total: int, clients: int) -> tuple[float, list[float], list[str]]:
    """``total`` createDtu spread over ``clients`` threads (each talking to one of ``urls``, in turn);
    returns (seconds, latencies, errors)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(index: int, count: int) -> None:
        with JsonClient(urls[index % len(urls)]) as connection:
            connection.get("/healthz")  # open the keep-alive connection before the clock starts
            start.wait()
            for n in range(count):
                began = time.perf_counter()
                try:
                    status, text = connection.post(
                        "/graphql", {"query": CREATE_DTU, "variables": variables(index, n)}
                    )
                    body = json.loads(text) if status == 200 else {}
                    payload = (body.get("data") or {}).get("createDtu") or {}
                    if status != 200 or body.get("errors") or payload.get("errors"):
                        errors.append(f"{status} {text[:300]!r}")
                        continue
                except (OSError, http.client.HTTPException) as exc:
                    errors.append(repr(exc))
                    continue
                latencies[index].append(time.perf_counter() - began)

    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(i, shares[i])) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, [v for per in latencies for v in per], errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--requests", type=int, default=2000, help="createDtu per run (default 2000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first (default 200)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="an existing database on the server to use (a scratch database is created next to it)",
    )
    parser.add_argument("--log-level", default="INFO", help="the server's CONCORD_LOG_LEVEL (default INFO)")
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="server processes sharing the database, clients spread over them (default 1; what several "
        "workers or API hosts would give)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes of each server (`concord serve --workers N`, default 1)",
    )
    args = parser.parse_args(argv)
    header(
        f"createDtu over HTTP against {args.servers} `concord serve --workers {args.workers}` "
        f"({args.servers * args.workers} server process(es)), {args.clients} client threads"
    )
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        with servers(backend, args.postgres_url, args.log_level, args.servers, args.workers) as running:
            urls = [server.url for server in running]
            pids = [server.process.pid for server in running]
            run(urls, args.warmup, args.clients)
            before, cpu_before = load(), [tree_cpu_seconds(pid) for pid in pids]
            client_began = time.process_time()
            elapsed, latencies, errors = run(urls, args.requests, args.clients)
            client_cpu = time.process_time() - client_began
            cpu_after = [tree_cpu_seconds(pid) for pid in pids]
        ok = len(latencies)
        rate = ok / elapsed
        verdict = "meets" if rate >= TARGET else "MISSES"
        # CPU the servers spent per request: a figure that other load on the machine moves much less.
        known = [
            (a, b) for a, b in zip(cpu_before, cpu_after, strict=True) if a is not None and b is not None
        ]
        cpu = f"{sum(b - a for a, b in known) / max(ok, 1) * 1000:.1f} ms" if known else "?"
        print(
            f"{backend:<9} {args.servers}x{args.workers} processes, {args.clients} clients: "
            f"{ok:>6} createDtu in {elapsed:6.2f} s = {rate:6.0f}/s "
            f"({verdict} the target of {TARGET:.0f}/s)\n"
            f"{'':<9} latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms  "
            f"p95 {percentile(latencies, 0.95) * 1000:.1f} ms  "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms;  "
            f"server CPU per request {cpu}, client {client_cpu / max(ok, 1) * 1000:.1f} ms;  "
            f"errors {len(errors)};  load average before {before}"
        )
        for error in errors[:3]:
            print(f"  error: {error}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
