"""Message arguments (Clerk payloads, prompts) never reach a log line, at any level: a
line about a message names its actor and id, and what went wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import dramatiq
import pytest

from core.logs import configure_logging
from core.queues import APPLY_CLERK_EVENT, IDENTITY_QUEUE
from core.settings import Settings
from workers.broker import build_broker
from workers.consumer import WakingRedisBroker

from .chat_worker_support import chat
from .support import behind_model

SSN = "078-05-1120"
EMAIL = "private.person@example.com"
PROMPT = "my secret prompt about my diagnosis"


@pytest.fixture
def debug_logs() -> Iterator[None]:
    configure_logging("json", "DEBUG")
    yield
    configure_logging("json", "INFO")


def test_no_payload_value_reaches_the_logs_through_retries_and_dead_letters_at_debug(
    debug_logs: None,
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    capsys: pytest.CaptureFixture[str],
    user_id: str,
) -> None:
    queue = f"privacy_{user_id}"
    broker.declare_queue(queue)

    def always_fails(event: dict[str, object]) -> None:
        raise RuntimeError("the database said no")

    failing = dramatiq.actor(
        always_fails,
        broker=broker,
        queue_name=queue,
        actor_name=f"always_fails_{user_id}",
        max_retries=2,
        min_backoff=10,
        max_backoff=20,
    )
    payload = {
        "type": "user.updated",
        "data": {
            "id": user_id,
            "updated_at": "not a time",  # schema-invalid: dead-lettered at once
            "email_addresses": [{"id": "idn_1", "email_address": EMAIL}],
            "private_metadata": {"ssn": SSN},
        },
        "prompt": PROMPT,
    }
    retried = failing.send(payload)
    dead = broker.get_actor(APPLY_CLERK_EVENT).send("msg_privacy", payload)
    broker.join(queue, timeout=20_000)
    broker.join(IDENTITY_QUEUE, timeout=20_000)
    worker.join()

    output = capsys.readouterr().err
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    # The lines about both messages are there, and name them...
    about_retried = [line for line in lines if retried.message_id in json.dumps(line)]
    assert any("Retries exceeded" in line["event"] for line in about_retried), about_retried
    assert any("Failed to process message" in line["event"] for line in about_retried)
    assert any(dead.message_id in json.dumps(line) for line in lines)
    # ...and nothing of what they carried.
    for value in (SSN, EMAIL, PROMPT, "private_metadata"):
        assert value not in output, value


def test_a_chat_logs_neither_its_prompt_nor_the_model_endpoint(
    settings: Settings, model_url: str, capsys: pytest.CaptureFixture[str], user_id: str
) -> None:
    configure_logging("json", "INFO")
    worker_settings = behind_model(settings, model_url)
    broker = build_broker(worker_settings)
    dramatiq.set_broker(broker)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        job_id = chat(broker, worker, user_id, PROMPT)
    finally:
        worker.stop()
        broker.close()
    output = capsys.readouterr().err
    assert job_id in output  # the chat's lines are there
    assert PROMPT not in output
    assert urlsplit(model_url).netloc not in output  # httpx2's request line is not
