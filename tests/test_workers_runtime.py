"""The broker's wake-ups and maintenance clock, and the worker supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from dramatiq import Message

from core.queues import MAX_WAKE_TOKENS, wake_key
from core.settings import Settings
from workers.consumer import WakingConsumer, WakingRedisBroker

from .support import aiwrap_worker, eventually, worker_processes


def probe_message(queue_name: str) -> Message[Any]:
    return Message(queue_name=queue_name, actor_name="probe", args=(), kwargs={}, options={})


def test_an_idle_consumer_wakes_on_enqueue_instead_of_sleeping_out_its_timeout(
    broker: WakingRedisBroker,
) -> None:
    queue = f"probe{os.getpid()}"
    broker.declare_queue(queue)
    broker.flush(queue)
    consumer = broker.consume(queue, prefetch=1, timeout=30_000)
    assert isinstance(consumer, WakingConsumer)
    returned = threading.Event()

    def wait_for_work() -> None:
        assert next(consumer) is None  # nothing yet: it blocks on the wake-up list
        returned.set()

    waiter = threading.Thread(target=wait_for_work, daemon=True)
    waiter.start()
    assert not returned.wait(0.3), "an empty queue should block the consumer"
    broker.enqueue(probe_message(queue))
    # Dramatiq's own consumer would sleep out its backoff, up to the 30 s timeout.
    assert returned.wait(5), "enqueue did not wake the idle consumer"
    message = next(consumer)
    assert message is not None and message.actor_name == "probe"
    consumer.ack(message)
    consumer.close()


def test_enqueue_keeps_the_wake_up_list_bounded(broker: WakingRedisBroker) -> None:
    queue = f"bounded{os.getpid()}"
    broker.declare_queue(queue)
    for _ in range(MAX_WAKE_TOKENS + 20):
        broker.enqueue(probe_message(queue))
    assert broker.client.llen(wake_key(queue)) == MAX_WAKE_TOKENS
    broker.flush(queue)
    broker.client.delete(wake_key(queue))


def test_queue_maintenance_is_due_by_the_clock_per_queue(broker: WakingRedisBroker) -> None:
    assert broker._maintenance_due("fetch", "a") == 1
    assert broker._maintenance_due("fetch", "a") == 0
    assert broker._maintenance_due("fetch", "b") == 1
    assert broker._maintenance_due("enqueue", "c") == 0
    broker._last_maintenance["a"] -= broker.MAINTENANCE_INTERVAL_S
    assert broker._maintenance_due("fetch", "a") == 1


@pytest.fixture
def supervisor(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    process = aiwrap_worker(settings, "--processes", "2", "--threads", "2", "--grace", "5")
    yield process
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_the_supervisor_replaces_a_killed_worker_process_and_drains_on_sigterm(
    supervisor: subprocess.Popen[bytes],
) -> None:
    assert eventually(lambda: len(worker_processes(supervisor.pid)) == 2, 30)
    victim = min(worker_processes(supervisor.pid))
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        alive = worker_processes(supervisor.pid)
        return len(alive) == 2 and victim not in alive

    assert eventually(replaced, 30), "the killed worker process was not replaced"
    assert supervisor.poll() is None
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0


def test_log_lines_inside_an_async_actor_carry_its_message_id(
    broker: WakingRedisBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import dramatiq

    from core.logs import configure_logging, get_logger

    configure_logging("json", "INFO")
    queue = f"logged{os.getpid()}"

    async def logged_probe() -> None:
        get_logger("tests.probe").info("inside_the_actor")

    actor = dramatiq.actor(
        logged_probe,
        broker=broker,
        queue_name=queue,
        actor_name=f"logged_probe_{os.getpid()}",
    )
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        message = actor.send()
        broker.join(queue, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    lines = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    [inside] = [line for line in lines if line["event"] == "inside_the_actor"]
    assert inside["message_id"] == message.message_id
    assert inside["actor"] == actor.actor_name


def test_async_actors_run_on_uvloop_without_touching_the_global_event_loop_policy(
    broker: WakingRedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import dramatiq
    import uvloop

    def refuse(_policy: object) -> None:  # deprecated from Python 3.14 on
        raise AssertionError("the worker swapped the global event-loop policy")

    monkeypatch.setattr(asyncio, "set_event_loop_policy", refuse)
    queue = f"loops{os.getpid()}"
    seen: list[type] = []

    async def which_loop() -> None:
        seen.append(type(asyncio.get_running_loop()))

    actor = dramatiq.actor(
        which_loop, broker=broker, queue_name=queue, actor_name=f"which_loop_{os.getpid()}"
    )
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        actor.send()
        broker.join(queue, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    assert seen == [uvloop.Loop]


def test_an_empty_openai_base_url_means_openai_even_when_the_variable_is_set_empty(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from workers.runtime import OPENAI_DEFAULT_BASE_URL, model_client

    # What compose's env_file passes for `.env.example`'s `OPENAI_BASE_URL=`.
    monkeypatch.setenv("OPENAI_BASE_URL", "")
    client = model_client(replace(settings, openai_base_url=""))
    assert str(client.base_url).rstrip("/") == OPENAI_DEFAULT_BASE_URL
    client_elsewhere = model_client(replace(settings, openai_base_url="http://127.0.0.1:9/v1"))
    assert str(client_elsewhere.base_url).rstrip("/") == "http://127.0.0.1:9/v1"
    asyncio.run(client.close())
    asyncio.run(client_elsewhere.close())
