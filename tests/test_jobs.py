"""The queued jobs and the request bodies are typed models, validated the same way
wherever they are read: a bad field gets one message, at the edge and in the worker."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from core.errors import InvalidChatJob, InvalidEvent
from core.jobs import ChatJob, new_job, parse_clerk_event, read_chat_job
from core.settings import Settings

from .chat_support import as_user


def a_job(**changes: Any) -> dict[str, Any]:
    job = msgspec.to_builtins(
        new_job("user_jobs", [{"role": "user", "content": "hi"}], model="gpt-4o-mini")
    )
    return {**job, **changes}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": " "}]}, "messages"),
        ({"model": ""}, "model"),
    ],
)
def test_a_bad_field_gets_the_same_message_from_ingest_and_from_the_worker(
    http: httpx.Client, settings: Settings, user_id: str, fields: dict[str, Any], field: str
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    response = http.post("/v1/chat", json=body, headers=as_user(settings, user_id))
    assert response.status_code == 400, response.text
    at_the_edge = response.json()["error"]["message"]
    with pytest.raises(InvalidChatJob) as in_the_worker:
        read_chat_job(a_job(**fields))
    assert at_the_edge == str(in_the_worker.value)
    assert at_the_edge.startswith(f"{field}: ")


def test_a_job_survives_the_queue_as_the_same_model() -> None:
    job = new_job(
        "user_jobs", [{"role": "user", "content": "hi"}], model="gpt-4o-mini", temperature=1
    )
    # Dramatiq hands the actor the message's arguments as json.loads made them.
    assert read_chat_job(msgspec.json.decode(msgspec.json.encode(job))) == job
    assert isinstance(job, ChatJob) and job.temperature == 1.0


def test_a_job_with_a_field_the_worker_does_not_know_is_refused() -> None:
    with pytest.raises(InvalidChatJob, match=r"^tools: unknown field"):
        read_chat_job(a_job(tools=[]))


def test_an_unhandled_clerk_event_type_names_the_ones_handled() -> None:
    with pytest.raises(InvalidEvent, match=r"user\.created, user\.deleted, user\.updated"):
        parse_clerk_event({"type": "session.created", "data": {"id": "sess_1"}})
