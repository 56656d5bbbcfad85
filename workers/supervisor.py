"""`aiwrap worker`: run N Dramatiq worker processes and keep them running.

Dramatiq's own master exits when a worker process dies; this one starts a new
process in its place (with a short backoff if they keep dying). SIGTERM or
SIGINT drains: each process stops fetching, lets in-flight messages finish
for up to the grace period, and anything unfinished stays unacked in Redis,
so another worker takes it once this one's heartbeat has expired.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import redis

from core.logs import configure_logging, get_logger
from core.queues import QUEUES
from core.settings import Settings

from .metrics import (
    mark_process_dead,
    prepare_multiprocess_dir,
    read_queue_depths,
    remove_multiprocess_dir,
    serve_metrics,
)

log = get_logger(__name__)

#: How long an idle consumer blocks before it looks again (ms); wake-ups make
#: new messages run at once regardless, so this only bounds shutdown latency.
WORKER_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class WorkerOptions:
    """How `aiwrap worker` was asked to run."""

    processes: int = 1
    #: Messages in flight per process. They wait on Postgres, Redis or the model,
    #: not on the CPU; and the more Clerk events a process holds, the more each
    #: of its commits applies (see workers/identity.py's GroupApplier).
    threads: int = 32
    queues: tuple[str, ...] = QUEUES
    grace_seconds: float = 30.0
    #: Where the summed metrics of all processes are served; None turns metrics off.
    metrics_port: int | None = 9191
    metrics_host: str = "127.0.0.1"


def run_worker_process(options: WorkerOptions, index: int) -> None:
    """Body of one worker process: consume until told to stop, then drain."""
    import dramatiq

    from .broker import build_broker

    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    broker = build_broker(settings, metrics=options.metrics_port is not None)
    dramatiq.set_broker(broker)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(
        broker,
        queues=set(options.queues),
        worker_threads=options.threads,
        worker_timeout=WORKER_TIMEOUT_MS,
    )
    worker.start()
    log.info(
        "worker_process_started",
        index=index,
        pid=os.getpid(),
        queues=list(options.queues),
        threads=options.threads,
    )
    stop.wait()
    log.info("worker_process_draining", index=index, grace_seconds=options.grace_seconds)
    worker.stop(timeout=int(options.grace_seconds * 1000))
    broker.close()
    log.info("worker_process_stopped", index=index)


class Supervisor:
    """Starts worker processes, replaces the ones that die, stops them all on a signal."""

    #: Seconds to wait before restarting a process that died, growing to the max.
    MIN_RESTART_DELAY = 0.5
    MAX_RESTART_DELAY = 10.0

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.context = multiprocessing.get_context("spawn")
        self.processes: dict[int, multiprocessing.process.BaseProcess] = {}
        self.started_at: dict[int, float] = {}
        self.stopping = threading.Event()
        self.metrics_dir: Path | None = None

    def start_metrics(self, port: int, host: str) -> None:
        """Serve every process's metrics, summed, and the queue depths on host:port."""
        # Before any worker process starts: they read the directory at import.
        self.metrics_dir = prepare_multiprocess_dir()
        client = redis.Redis.from_url(
            Settings.from_env().redis_url, socket_connect_timeout=2, socket_timeout=5
        )
        try:
            serve_metrics(self.metrics_dir, port, host, lambda: read_queue_depths(client))
        except OSError as error:
            # Metrics are for watching the work, not a reason to stop doing it.
            log.error(
                "metrics_unavailable",
                host=host,
                port=port,
                error=str(error),
                hint="pass --metrics-port with a free port, or 0 to turn metrics off",
            )
            return
        log.info("metrics_serving", url=f"http://{host}:{port}/metrics")

    def start_process(self, index: int) -> None:
        process = self.context.Process(
            target=run_worker_process,
            args=(self.options, index),
            name=f"aiwrap-worker-{index}",
            daemon=False,
        )
        process.start()
        self.processes[index] = process
        self.started_at[index] = time.monotonic()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.options.metrics_port is not None:
            self.start_metrics(self.options.metrics_port, self.options.metrics_host)
        for index in range(self.options.processes):
            self.start_process(index)
        log.info("supervisor_started", pid=os.getpid(), processes=self.options.processes)
        delays = dict.fromkeys(self.processes, self.MIN_RESTART_DELAY)
        while not self.stopping.wait(0.2):
            for index, process in list(self.processes.items()):
                if process.is_alive() or self.stopping.is_set():
                    continue
                # A process that lived a while earns a fast restart; one that
                # keeps dying at once waits longer each time.
                if time.monotonic() - self.started_at[index] > 60:
                    delays[index] = self.MIN_RESTART_DELAY
                if self.metrics_dir is not None and process.pid is not None:
                    mark_process_dead(self.metrics_dir, process.pid)
                log.warning(
                    "worker_process_died",
                    index=index,
                    pid=process.pid,
                    exitcode=process.exitcode,
                    restart_in_s=delays[index],
                )
                if self.stopping.wait(delays[index]):
                    break
                self.start_process(index)
                delays[index] = min(delays[index] * 2, self.MAX_RESTART_DELAY)
        return self._stop_all()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping.is_set():
            return
        log.info("supervisor_stopping", signal=signal.Signals(signum).name)
        self.stopping.set()

    def _stop_all(self) -> int:
        for process in self.processes.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.options.grace_seconds + 5
        for process in self.processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error(
                    "worker_process_killed",
                    pid=process.pid,
                    reason="did not stop within the grace period",
                )
                process.kill()
                process.join()
        if self.metrics_dir is not None:
            remove_multiprocess_dir(self.metrics_dir)
        log.info("supervisor_stopped")
        return 0


def run_workers(options: WorkerOptions) -> int:
    """Run worker processes until a signal; return the exit status."""
    return Supervisor(options).run()


def parse_queues(names: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(names) - set(QUEUES))
    if unknown:
        raise ValueError(f"Unknown queue(s) {', '.join(unknown)}; aiwrap has {', '.join(QUEUES)}.")
    return tuple(names)
