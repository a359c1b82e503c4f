"""``createDtu`` mutations per second, end to end over HTTP, against a real ``concord serve``.

Starts the server (one uvicorn process, default settings: JSON request log, SQLite in WAL mode with
``synchronous=FULL``, or PostgreSQL with ``--backend postgres``) on a scratch data directory, then runs a
few client threads, each with its own keep-alive ``httpx.Client``, posting ``createDtu`` as fast as the
server answers. Every answer is checked (a mutation that returns errors is counted, not timed). Prints
throughput and latency percentiles; the client runs on the same machine and takes CPU from the server.

    .venv/bin/python benchmarks/create_dtu.py                      # SQLite, 4 clients, 2000 requests
    .venv/bin/python benchmarks/create_dtu.py --backend postgres --clients 8 -n 5000

Target (issue 2): at least 200 createDtu per second over HTTP on a 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    DEFAULT_POSTGRES_URL,
    ROOT,
    cpu_seconds,
    header,
    load,
    percentile,
    postgres_database,
)

sys.path.insert(0, str(ROOT / "tests"))
from procs import Server, server_env, start_server

TARGET = 200.0
CREATE_DTU = """
mutation CreateDtu($input: CreateDtuInput!) {
  createDtu(input: $input) { dtu { id version } errors { field code message } }
}"""


@contextmanager
def server(backend: str, postgres_url: str, log_level: str) -> Iterator[Server]:
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="concord-bench-")))
        if backend == "postgres":
            database_url = stack.enter_context(postgres_database(postgres_url))
        else:
            database_url = f"sqlite:///{directory / 'concord.db'}"
        env = server_env(directory, database_url, log_level=log_level)
        running = start_server(env, directory / "server.log")
        try:
            yield running
        finally:
            running.stop()


def variables(client: int, n: int) -> dict[str, object]:
    return {
        "input": {
            "title": f"benchmark note {client}-{n}",
            "human": {"summary": "A DTU of typical size.", "bullets": ["one", "two", "three"]},
            "tags": ["bench", f"client-{client}"],
        }
    }


def run(url: str, total: int, clients: int) -> tuple[float, list[float], list[str]]:
    """``total`` createDtu spread over ``clients`` threads; (seconds, latencies, errors)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(index: int, count: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            http.get("/healthz")  # open the keep-alive connection before the clock starts
            start.wait()
            for n in range(count):
                began = time.perf_counter()
                try:
                    response = http.post(
                        "/graphql", json={"query": CREATE_DTU, "variables": variables(index, n)}
                    )
                    body = response.json() if response.status_code == 200 else {}
                    payload = (body.get("data") or {}).get("createDtu") or {}
                    if response.status_code != 200 or body.get("errors") or payload.get("errors"):
                        errors.append(f"{response.status_code} {response.text[:300]}")
                        continue
                except httpx.HTTPError as exc:
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
    args = parser.parse_args(argv)
    header("createDtu over HTTP against `concord serve` (1 process)")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        with server(backend, args.postgres_url, args.log_level) as running:
            run(running.url, args.warmup, args.clients)
            before, cpu_before = load(), cpu_seconds(running.process.pid)
            elapsed, latencies, errors = run(running.url, args.requests, args.clients)
            cpu_after = cpu_seconds(running.process.pid)
        ok = len(latencies)
        rate = ok / elapsed
        verdict = "meets" if rate >= TARGET else "MISSES"
        # CPU the server spent per request: a figure other load on the machine barely moves.
        cpu = (
            f"{(cpu_after - cpu_before) / max(ok, 1) * 1000:.2f} ms"
            if cpu_before is not None and cpu_after is not None
            else "?"
        )
        print(
            f"{backend:<9} {args.clients} clients {ok:>6} createDtu in {elapsed:6.2f} s = {rate:6.0f}/s "
            f"({verdict} the target of {TARGET:.0f}/s)\n"
            f"{'':<9} latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms  "
            f"p95 {percentile(latencies, 0.95) * 1000:.1f} ms  "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms;  "
            f"server CPU per request {cpu};  errors {len(errors)};  load average before {before}"
        )
        for error in errors[:3]:
            print(f"  error: {error}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
