"""Benchmark of Clerk identity sync: `python -m bench.identity`.

Measures, against embedded Postgres and Redis started here (or DATABASE_URL /
REDIS_URL when both are set), all traffic on 127.0.0.1:

1. webhooks accepted per second by one `aiwrap ingest` process at 32
   concurrent connections, beside a bare Starlette endpoint under the same
   uvicorn in the same run (target ratio >= 0.5);
2. events applied per second by one worker process, beside a no-op async
   actor on the same broker in the same run (target >= 1,000/s);
3. webhook accepted -> row visible, p50 and p99, on an idle system (one event
   a second) and under a steady background load (targets 15 ms / 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from bench.stack import HOST, percentile, services, spawn, wait_for_port
from bench.webhooks import (
    created_event,
    exchange,
    fresh_requests,
    load,
    measure_http,
    run_bare_server,
    signed_request,
)

NOOP_QUEUE = "bench_noop"
WORKER_THREADS = 32  # aiwrap worker's default (WorkerOptions.threads)


def run_worker(queue: str, threads: int) -> None:
    """One worker process as `aiwrap worker` runs it, on `queue` only."""
    import dramatiq

    from core.logs import configure_logging
    from core.settings import Settings
    from workers.broker import build_broker
    from workers.supervisor import WORKER_TIMEOUT_MS

    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    broker = build_broker(settings)

    async def bench_noop(svix_id: str, event: dict[str, Any]) -> None:
        return None

    dramatiq.actor(broker=broker, actor_name=NOOP_QUEUE, queue_name=NOOP_QUEUE)(bench_noop)
    dramatiq.set_broker(broker)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = dramatiq.Worker(
        broker,
        queues={queue},
        worker_threads=threads,
        worker_timeout=WORKER_TIMEOUT_MS,
    )
    worker.start()
    stop.wait()
    worker.stop(timeout=5000)
    broker.close()


def preload(broker: Any, queue: str, actor_name: str, count: int) -> None:
    from dramatiq import Message

    for i in range(count):
        event = created_event(f"user_wbench_{queue}_{i}_{uuid.uuid4().hex[:8]}")
        broker.enqueue(
            Message(
                queue_name=queue,
                actor_name=actor_name,
                args=(f"msg_{uuid.uuid4().hex}", event),
                kwargs={},
                options={},
            )
        )


def measure_worker(
    stack: ExitStack, env: dict[str, str], count: int, threads: int
) -> dict[str, float]:
    from core.queues import APPLY_CLERK_EVENT as ACTOR_NAME
    from core.queues import IDENTITY_QUEUE
    from core.settings import Settings
    from workers.broker import build_broker

    broker = build_broker(Settings.from_env(env))
    stack.callback(broker.close)
    broker.declare_queue(NOOP_QUEUE)
    rates = {}
    for name, queue, actor in (
        ("noop_actor", NOOP_QUEUE, NOOP_QUEUE),
        ("identity_actor", IDENTITY_QUEUE, ACTOR_NAME),
    ):
        broker.flush(queue)
        preload(broker, queue, actor, count)
        process = spawn(
            stack,
            [sys.executable, "-m", "bench.identity", "--worker", queue, "--threads", str(threads)],
            env,
        )
        deadline = time.monotonic() + 120
        start_at: tuple[float, int] | None = None
        while (left := int(broker.do_qsize(queue))) > 0:
            assert process.poll() is None and time.monotonic() < deadline, f"{name} stalled"
            # Start the clock once the worker is into its stride, past its boot.
            if start_at is None and left <= count - 200:
                start_at = (time.perf_counter(), left)
            time.sleep(0.01)
        assert start_at is not None
        rates[name] = start_at[1] / (time.perf_counter() - start_at[0])
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    return rates


def probe_latencies(port: int, database_url: str, count: int, every: float) -> list[float]:
    """POST a new user, then poll until its row is visible; milliseconds each."""
    import psycopg

    latencies = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        loop = asyncio.new_event_loop()
        reader, writer = loop.run_until_complete(asyncio.open_connection(HOST, port))
        try:
            for _ in range(count):
                began = time.perf_counter()
                user_id = f"user_probe_{uuid.uuid4().hex[:20]}"
                request = signed_request(created_event(user_id))
                status = loop.run_until_complete(exchange(reader, writer, request))
                accepted = time.perf_counter()
                assert status == 200, status
                deadline = accepted + 5
                while (
                    conn.execute('SELECT 1 FROM "user" WHERE id = %s', (user_id,)).fetchone()
                    is None
                ):
                    assert time.perf_counter() < deadline, "row never appeared"
                    time.sleep(0.0005)
                latencies.append((time.perf_counter() - accepted) * 1000)
                time.sleep(max(0.0, every - (time.perf_counter() - began)))
        finally:
            writer.close()
            loop.close()
    return latencies


def measure_latency(
    stack: ExitStack, env: dict[str, str], samples: int, load_rate: float
) -> dict[str, dict[str, float]]:
    from core.queues import IDENTITY_QUEUE
    from devstack.embedded import free_port

    port = free_port()
    ingest = spawn(stack, [sys.executable, "-m", "cli", "ingest", "--port", str(port)], env)
    spawn(stack, [sys.executable, "-m", "cli", "worker", "--processes", "1",
                  "--queues", IDENTITY_QUEUE], env)  # fmt: skip
    wait_for_port(port, ingest)
    probe_latencies(port, env["DATABASE_URL"], 3, 0.2)  # warm up both processes
    results = {}
    idle = probe_latencies(port, env["DATABASE_URL"], samples, 1.0)
    results["idle"] = idle

    background: dict[str, Any] = {}

    def run_load() -> None:
        background["result"] = asyncio.run(
            load(port, fresh_requests(), samples * 0.1 + 2, rate=load_rate)
        )

    loader = threading.Thread(target=run_load)
    loader.start()
    time.sleep(1.0)  # let the background load settle
    results["under_load"] = probe_latencies(port, env["DATABASE_URL"], samples * 4, 0.025)
    loader.join()
    rate, statuses = background["result"]
    assert set(statuses) == {200}, statuses
    return {
        name: {
            "p50_ms": percentile(v, 0.5),
            "p99_ms": percentile(v, 0.99),
            "max_ms": max(v),
            "samples": len(v),
            **({"background_rate_per_s": rate} if name == "under_load" else {}),
        }
        for name, v in results.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.identity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="of load per server, HTTP measurement"
    )
    parser.add_argument(
        "--slice", type=float, default=1.0, help="seconds per turn, HTTP measurement"
    )
    parser.add_argument("--events", type=int, default=10_000, help="per worker measurement")
    parser.add_argument("--samples", type=int, default=25, help="idle latency samples")
    parser.add_argument(
        "--load-rate",
        type=float,
        default=300.0,
        help="webhooks a second of background load for latency under load",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=WORKER_THREADS,
        help="worker threads per process (default: aiwrap worker's)",
    )
    parser.add_argument(
        "--only",
        choices=["http", "worker", "latency"],
        help="run just one of the three measurements",
    )
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server:
        run_bare_server(args.bare_server)
        return 0
    if args.worker:
        run_worker(args.worker, args.threads)
        return 0

    with ExitStack() as stack, services(stack) as env:
        env.setdefault("AIWRAP_LOG_LEVEL", "INFO")
        report: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "log_level": env["AIWRAP_LOG_LEVEL"],
        }
        if args.only in (None, "http"):
            report["webhooks_per_s"] = measure_http(stack, env, args.seconds, args.slice)
            print(json.dumps(report["webhooks_per_s"]), flush=True)
        if args.only in (None, "worker"):
            worker = measure_worker(stack, env, args.events, args.threads)
            report["events_applied_per_s"] = {
                **{k: round(v) for k, v in worker.items()},
                "worker_threads": args.threads,
            }
            print(json.dumps(report["events_applied_per_s"]), flush=True)
        if args.only in (None, "latency"):
            latency = measure_latency(stack, env, args.samples, args.load_rate)
            report["accepted_to_visible"] = {
                name: {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
                for name, figures in latency.items()
            }
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
